"""Loading base models (hub id, local folder or GGUF file) and choosing the device and thread count."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Used when a tokenizer ships without a template (some GGUF files): the same ChatML that SmolLM2 uses.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def resolve_device(setting: str) -> str:
    """Pick the device: the configured one, else the first GPU when present, else the CPU."""
    if setting != "auto":
        return setting
    return "cuda" if torch.cuda.is_available() else "cpu"


def devices(setting: str) -> list[str]:
    """List the devices that may each run one training job at a time."""
    if setting == "auto" and torch.cuda.is_available():
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return [resolve_device(setting)]


def dtype_for(device: str) -> torch.dtype:
    """Use bfloat16 on a GPU; float32 on a CPU, where bfloat16 matmuls are slower for training."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def set_threads(configured: int) -> int:
    """Give torch one thread per physical core (hyper-threads slow CPU matmuls down) unless configured."""
    threads = configured or psutil.cpu_count(logical=False) or os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def load_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a base model, making sure it has a chat template and a pad token."""
    path = Path(source)
    if source.endswith(".gguf"):
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, device: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a base model's weights on a device; GGUF files are dequantized so they can be trained and merged."""
    dtype = dtype or dtype_for(device)
    path = Path(source)
    if source.endswith(".gguf"):
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=dtype
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    log.info("Loaded base model from %s on %s (%s)", source, device, dtype)
    return model.to(device)
