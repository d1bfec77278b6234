-- Crash-safe ledger: a reservation carries the client token that also goes into the job's metadata at the backend,
-- so a reservation left 'reserved' by a killed bot is matched to the job it started (or voided) at the next start.

ALTER TABLE spend_ledger ADD COLUMN client_token TEXT;
CREATE UNIQUE INDEX spend_ledger_by_token ON spend_ledger (client_token) WHERE client_token IS NOT NULL;

-- Chat spend shares the ledger: a 'chat' row holds an answer's worst case while it streams, then what it cost.
ALTER TABLE spend_ledger ADD COLUMN kind TEXT NOT NULL DEFAULT 'job';   -- job | chat
