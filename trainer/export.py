"""What vLLM needs to serve the trainer's adapters: peft folders, listed as --lora-modules name=path pairs."""

from __future__ import annotations

import json
from pathlib import Path

from trainer.config import Settings
from trainer.store import Store


def adapters(settings: Settings) -> dict[str, Path]:
    """Map every fine-tuned model name to its adapter folder (adapter_config.json + adapter_model.safetensors)."""
    store = Store(settings.data_dir / "trainer.db")
    try:
        found = {row["fine_tuned_model"]: settings.data_dir.resolve() / "adapters" / row["id"] / "final"
                 for row in store.fine_tuned_models()}
    finally:
        store.close()
    return {name: path for name, path in found.items() if (path / "adapter_config.json").exists()}


def vllm_lora_modules(settings: Settings) -> str:
    """Render the adapters as the JSON values of vLLM's --lora-modules, one per line, with their base model."""
    lines = []
    for name, path in adapters(settings).items():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        lines.append(json.dumps({"name": name, "path": str(path), "base_model_name": base}))
    return "\n".join(lines)
