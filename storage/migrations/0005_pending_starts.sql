-- Pending starts: a checked file waiting for its requester's Start or a teacher's decision. A row, not memory, so
-- a restart keeps every Start button and approval; the staged file lies under the data directory, named by token.

CREATE TABLE pending_starts (
    token             TEXT PRIMARY KEY,           -- also the client token of the job's ledger row and metadata
    guild_id          INTEGER NOT NULL,
    channel_id        INTEGER NOT NULL,
    user_id           INTEGER NOT NULL,
    is_teacher        INTEGER NOT NULL,           -- teachers skip per-student quotas and approvals
    base_model        TEXT NOT NULL,
    n_epochs          INTEGER,                    -- what the student asked for; NULL: the backend chooses
    suffix            TEXT,
    method            TEXT NOT NULL,              -- supervised | dpo
    training_filename TEXT NOT NULL,              -- the attachment's name, as the student knows it
    training_name     TEXT NOT NULL,              -- the name it is uploaded under (.jsonl)
    training_path     TEXT NOT NULL,              -- the staged file
    validation_name   TEXT,
    validation_path   TEXT,
    examples          INTEGER NOT NULL,
    tokens_billed     INTEGER NOT NULL,
    report_epochs     INTEGER,                    -- the epochs the estimate assumed
    estimated_usd     REAL,
    cleared           INTEGER NOT NULL DEFAULT 0, -- moderation passed (checked once, reused at the teacher's Approve)
    state             TEXT NOT NULL,              -- waiting | awaiting_approval
    claimed           INTEGER NOT NULL DEFAULT 0, -- a start is under way: a second click (or Approve) is refused
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL
);
CREATE INDEX pending_starts_by_expiry ON pending_starts (expires_at);
CREATE INDEX pending_starts_by_user ON pending_starts (guild_id, user_id);
