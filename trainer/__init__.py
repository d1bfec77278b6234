"""The self-hosted, OpenAI-compatible fine-tuning and chat server (python -m trainer)."""
