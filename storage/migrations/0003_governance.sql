-- Classroom governance: per-server settings set by the teacher, a spend ledger per job, approvals, deletions.
-- Snowflakes are INTEGER, backend IDs TEXT, money REAL US dollars, times UTC epoch seconds.

CREATE TABLE class_settings (
    guild_id           INTEGER PRIMARY KEY,
    teacher_role_id    INTEGER,                   -- members with this role count as teachers (besides Manage Server)
    teacher_channel_id INTEGER,                   -- where approval cards and moderation reports go
    budget_usd         REAL,                      -- the server's spending cap for the term; NULL: no cap
    jobs_per_day       INTEGER,                   -- per student, rolling 24 hours; NULL: no limit
    max_examples       INTEGER,                   -- per job; NULL: no limit
    max_tokens         INTEGER,                   -- billed tokens per job; NULL: no limit
    allowed_models     TEXT,                      -- comma-separated base models students may use; NULL: any
    approvals          INTEGER NOT NULL DEFAULT 0,
    moderation         INTEGER,                   -- 1 on, 0 off, NULL: on when the backend offers moderation
    updated_at         INTEGER NOT NULL
);

CREATE TABLE spend_ledger (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id     INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    job_id       TEXT UNIQUE,                     -- set once the backend created the job
    base_model   TEXT NOT NULL,
    reserved_usd REAL NOT NULL,                   -- the estimate, held from Start until the job ends
    actual_usd   REAL,                            -- trained tokens x price, once the job ended
    released_usd REAL NOT NULL DEFAULT 0,         -- what the job did not use, given back to the budget
    state        TEXT NOT NULL,                   -- reserved | active | settled | void (the start never happened)
    created_at   INTEGER NOT NULL,
    settled_at   INTEGER
);
CREATE INDEX spend_ledger_by_guild ON spend_ledger (guild_id, state);
CREATE INDEX spend_ledger_by_user ON spend_ledger (guild_id, user_id, created_at);

CREATE TABLE approvals (
    id              TEXT PRIMARY KEY,
    guild_id        INTEGER NOT NULL,
    channel_id      INTEGER NOT NULL,             -- where the student asked (they are told there)
    user_id         INTEGER NOT NULL,
    pending_token   TEXT NOT NULL,                -- the checked file waiting in memory (lost on restart)
    base_model      TEXT NOT NULL,
    filename        TEXT NOT NULL,
    examples        INTEGER NOT NULL,
    tokens          INTEGER NOT NULL,
    estimated_usd   REAL,
    status          TEXT NOT NULL,                -- pending | approved | rejected | expired | failed
    decided_by      INTEGER,
    job_id          TEXT,
    card_message_id INTEGER,
    created_at      INTEGER NOT NULL,
    decided_at      INTEGER
);
CREATE INDEX approvals_by_guild ON approvals (guild_id, status);

CREATE TABLE backend_deletions (
    resource_id TEXT PRIMARY KEY,                 -- a file id or a fine-tuned model name
    guild_id    INTEGER NOT NULL,
    user_id     INTEGER,                          -- whose data it was
    kind        TEXT NOT NULL,                    -- file | model
    deleted_by  INTEGER NOT NULL,
    deleted_at  INTEGER NOT NULL
);
CREATE INDEX backend_deletions_by_guild ON backend_deletions (guild_id);
