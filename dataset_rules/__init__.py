"""Pure dataset rules shared by the bot and the self-hosted trainer: formats, findings, tokens, models."""
