-- Prices a teacher set for models the price table (PRICES_FILE) does not know, e.g. another OpenAI-compatible
-- backend's own models: USD per 1M tokens. Without one, such a model is not used while the class has a cap.
CREATE TABLE class_prices (
    guild_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    input_usd REAL NOT NULL,
    output_usd REAL NOT NULL,
    training_usd REAL,
    set_by INTEGER NOT NULL,
    set_at INTEGER NOT NULL,
    PRIMARY KEY (guild_id, model)
);
