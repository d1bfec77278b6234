-- When each student asked a model (chat, /ask, /compare, /evaluate ...), so the per-student rate holds across a
-- restart: a bot started again does not give anyone a fresh minute. Rows older than the rate's window are deleted.
CREATE TABLE request_times (
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX request_times_user ON request_times (guild_id, user_id, at);
CREATE INDEX request_times_at ON request_times (at);
