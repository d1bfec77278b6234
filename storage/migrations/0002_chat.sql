-- Chat threads bound to a model, and the turns of each conversation (the bot rebuilds history from these).
-- Fine-tuned models and checkpoints a server may chat with come from jobs / job_checkpoints (0001).

CREATE TABLE chat_threads (
    thread_id     INTEGER PRIMARY KEY,            -- the Discord thread
    guild_id      INTEGER NOT NULL,
    channel_id    INTEGER NOT NULL,               -- the channel the thread hangs off
    user_id       INTEGER NOT NULL,               -- who opened it
    model         TEXT NOT NULL,
    system_prompt TEXT,
    job_id        TEXT,                           -- the job whose model this is, when opened from one
    created_at    INTEGER NOT NULL,
    ended_at      INTEGER
);
CREATE INDEX chat_threads_by_guild ON chat_threads (guild_id, created_at DESC);
CREATE INDEX chat_threads_by_user ON chat_threads (guild_id, user_id);

CREATE TABLE chat_turns (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    thread_id  INTEGER NOT NULL REFERENCES chat_threads (thread_id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    user_id    INTEGER,                           -- the student who wrote a user turn (NULL for the model)
    reply_to   INTEGER REFERENCES chat_turns (id) ON DELETE CASCADE, -- an answer goes with its question
    content    TEXT NOT NULL,
    tokens     INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX chat_turns_by_thread ON chat_turns (thread_id, id);
CREATE INDEX chat_turns_by_user ON chat_turns (user_id);
