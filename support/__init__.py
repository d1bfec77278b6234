"""What the tests and the benchmarks share, and neither owns: the loopback fakes of Discord and OpenAI (fakes/), the
real bot run against them (bot_harness.py), and the trainer as a real process with a tiny model built on the spot or
an offline GGUF (trainer_harness.py). Nothing here needs pytest; no product code imports it (tests/test_layering.py)."""
