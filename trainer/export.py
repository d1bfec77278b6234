"""What vLLM needs to serve the trainer's adapters: peft folders, listed as --lora-modules values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainer.config import Settings
from trainer.store import Store


@dataclass(frozen=True)
class Adapter:
    """A fine-tuned model's name, its base model's name in the trainer, and its peft folder."""

    name: str
    base: str
    path: Path


def adapters(settings: Settings) -> list[Adapter]:
    """List every fine-tuned model whose adapter folder (adapter_config.json + safetensors) is on disk."""
    store = Store(settings.data_dir / "trainer.db")
    try:
        found = [Adapter(row["fine_tuned_model"], row["model"],
                         settings.final_adapter(row["id"]).resolve())
                 for row in store.fine_tuned_models()]
    finally:
        store.close()
    return [adapter for adapter in found if (adapter.path / "adapter_config.json").exists()]


def vllm_lora_modules(settings: Settings) -> str:
    """Render the adapters as JSON values of vLLM's --lora-modules, one per line.

    base_model_name is the trainer's base model name: serve the base in vLLM with --served-model-name set to it.
    """
    return "\n".join(json.dumps({"name": adapter.name, "path": str(adapter.path), "base_model_name": adapter.base})
                     for adapter in adapters(settings))
