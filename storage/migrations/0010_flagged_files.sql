-- Training files moderation flagged. The student sees the lines and may ask a teacher; a teacher may allow exactly
-- that file (its SHA-256), and the student's waiting Start then goes on. A row, so the teacher's Allow button works
-- after a restart, and the allowance is on record for the class report.
CREATE TABLE flagged_files (
    id              TEXT PRIMARY KEY,
    guild_id        INTEGER NOT NULL,
    channel_id      INTEGER NOT NULL,             -- where the student pressed Start (told there when it goes on)
    user_id         INTEGER NOT NULL,
    pending_token   TEXT NOT NULL,                -- the waiting Start that goes on once a teacher allows the file
    filename        TEXT NOT NULL,
    file_hash       TEXT NOT NULL,                -- SHA-256 of the staged file(s): an allowance holds for this file only
    lines           TEXT NOT NULL,                -- JSON: the flagged lines, their (clipped) text and span
    status          TEXT NOT NULL,                -- flagged | asked | allowed
    decided_by      INTEGER,
    card_message_id INTEGER,
    created_at      INTEGER NOT NULL,
    decided_at      INTEGER
);
CREATE INDEX flagged_files_by_hash ON flagged_files (guild_id, file_hash, status);
CREATE INDEX flagged_files_by_user ON flagged_files (guild_id, user_id);
