-- Core tables: fine-tuning jobs the bot watches, their metrics, per-server settings, bot metadata.
-- Snowflakes are INTEGER, backend IDs TEXT, times UTC epoch seconds.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    locale   TEXT
);

CREATE TABLE jobs (
    id                 TEXT PRIMARY KEY,          -- the backend's job id (ftjob-...)
    guild_id           INTEGER NOT NULL,
    channel_id         INTEGER NOT NULL,
    user_id            INTEGER NOT NULL,
    base_model         TEXT NOT NULL,
    method             TEXT NOT NULL,             -- supervised | dpo
    suffix             TEXT,
    n_epochs           INTEGER,
    training_file_id   TEXT NOT NULL,
    validation_file_id TEXT,
    training_filename  TEXT NOT NULL,
    examples           INTEGER NOT NULL DEFAULT 0,
    estimated_tokens   INTEGER NOT NULL DEFAULT 0, -- billed tokens estimated before the start
    estimated_cost_usd REAL,
    status             TEXT NOT NULL,
    fine_tuned_model   TEXT,
    trained_tokens     INTEGER,
    error_code         TEXT,
    error_message      TEXT,
    total_steps        INTEGER,
    estimated_finish   INTEGER,
    last_event_id      TEXT,                      -- cursor: newest event already shown
    progress_message_id INTEGER,                  -- the one progress card, edited in place
    chart_step         INTEGER NOT NULL DEFAULT -1, -- step of the last chart rendered onto the card
    notice_message_id  INTEGER,                   -- set once the end-of-job notice is posted
    orphaned           INTEGER NOT NULL DEFAULT 0, -- channel gone or forbidden: stop posting
    created_at         INTEGER NOT NULL,
    started_at         INTEGER,
    finished_at        INTEGER,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX jobs_by_guild ON jobs (guild_id, created_at DESC);
CREATE INDEX jobs_watched ON jobs (notice_message_id, orphaned);

CREATE TABLE job_metrics (
    job_id          TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step            INTEGER NOT NULL,
    train_loss      REAL,
    valid_loss      REAL,
    train_accuracy  REAL,
    valid_accuracy  REAL,
    full_valid_loss REAL,
    total_steps     INTEGER,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

CREATE TABLE job_checkpoints (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    model_id   TEXT,                             -- the checkpoint's model name when the backend gives one
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
