-- Class-built datasets (/dataset): a teacher names one and sets its system prompt; students add examples to it.
-- Server-scoped: names are unique within a server. A student's examples go with /mydata delete.

CREATE TABLE class_datasets (
    guild_id      INTEGER NOT NULL,
    name          TEXT NOT NULL,
    system_prompt TEXT,
    created_by    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (guild_id, name)
);

CREATE TABLE class_dataset_examples (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id   INTEGER NOT NULL,
    dataset    TEXT NOT NULL,
    number     INTEGER NOT NULL,                   -- shown to the class ("example 12"); never reused in a dataset
    user_id    INTEGER NOT NULL,                   -- the student who wrote it
    question   TEXT NOT NULL,
    answer     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    FOREIGN KEY (guild_id, dataset) REFERENCES class_datasets (guild_id, name) ON DELETE CASCADE,
    UNIQUE (guild_id, dataset, number)
);
CREATE INDEX class_dataset_examples_by_user ON class_dataset_examples (guild_id, user_id);
