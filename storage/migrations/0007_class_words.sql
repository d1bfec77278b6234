-- A teacher's own list of words to hold back on their server, checked by the bot before the backend's moderation.
CREATE TABLE class_words (
    guild_id   INTEGER NOT NULL,
    normalized TEXT NOT NULL,                     -- what is matched: NFKC, case-folded, without spaces or punctuation
    word       TEXT NOT NULL,                     -- as the teacher typed it (shown in /class words list)
    added_by   INTEGER NOT NULL,
    added_at   INTEGER NOT NULL,
    PRIMARY KEY (guild_id, normalized)
);
