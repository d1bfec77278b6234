"""Loading base models (hub id, local folder or GGUF file) and choosing the device and thread count."""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

from trainer.cpu_share import cpu_threads

log = logging.getLogger(__name__)

# Each family's own chat markup, without any default system prompt: a vendor template that adds one when the chat
# has none (SmolLM2's "You are a helpful AI assistant named SmolLM...", Qwen's "You are Qwen, created by Alibaba
# Cloud...") would train and answer with words the class never wrote. Every prefix of a chat renders as a prefix of
# the whole, which the assistant-only labels rely on.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Gemma has no system role: as in Google's own template, a system message opens the first user turn.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(system='') %}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] + '\n\n' %}"
    "{% else %}{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (ns.system if role == 'user' else '') + message['content']"
    " + '<end_of_turn>\n' }}{% if role == 'user' %}{% set ns.system = '' %}{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
# A model of no known family and without a template: plain labelled turns ended by its own end-of-text token.
PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant: {% endif %}"
)
FAMILY_TEMPLATES = {"gemma": GEMMA_TEMPLATE, "chatml": CHATML_TEMPLATE}
# The token that ends an assistant turn in each family: generation stops there.
TURN_END = {"gemma": "<end_of_turn>", "chatml": "<|im_end|>"}
GEMMA_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
CHATML_TYPES = ("qwen2", "qwen3", "llama")  # llama: SmolLM2 is a Llama model with ChatML


def chat_family(tokenizer: PreTrainedTokenizerBase, model_type: str | None = None) -> str | None:
    """Name a model's chat family from its config's model type and the turn markers its vocabulary has."""
    vocab = tokenizer.get_vocab()
    has_gemma = "<start_of_turn>" in vocab and "<end_of_turn>" in vocab
    has_chatml = "<|im_start|>" in vocab and "<|im_end|>" in vocab
    if has_gemma and (model_type in GEMMA_TYPES or model_type is None or not has_chatml):
        return "gemma"
    if has_chatml and (model_type in CHATML_TYPES or model_type is None or not has_gemma):
        return "chatml"
    return None


def apply_family_template(tokenizer: PreTrainedTokenizerBase, model_type: str | None = None) -> str | None:
    """Give a tokenizer its family's own template (no vendor system prompt); keep an unknown family's own one."""
    family = chat_family(tokenizer, model_type)
    if family is not None:
        tokenizer.chat_template = FAMILY_TEMPLATES[family]
    elif not tokenizer.chat_template:
        tokenizer.chat_template = PLAIN_TEMPLATE
    return family


def render_chat(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """Render a chat as text: the one function training and chat both use, so both see the same text."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert isinstance(text, str)
    return text


def turn_end_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The ids that end an assistant's turn: the family's turn marker and the end-of-text token."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    family = chat_family(tokenizer)
    if family is not None:
        ids.add(tokenizer.convert_tokens_to_ids(TURN_END[family]))
    return ids


def control_token_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's special tokens: turn markers, <bos>/<pad>, and for Gemma some 6,000 <unusedN> and image markers.

    None of them is ever text of an answer. A few LoRA steps leave their output rows about as likely as the turn end
    the model was taught (Gemma-3-270m after a 40-example lesson: <end_of_turn> 3%, <unused824> 5%), so generation
    suppresses all but the turn ends, which then win.
    """
    added = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


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
    """Use bfloat16 on a GPU; float32 on a CPU (where training may still multiply in bfloat16:
    training_matmul_dtype)."""
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def cpu_multiplies_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX tiles or AVX512-BF16). Measured on such a CPU
    (docs/benchmarks.md): a lesson's matmuls 5x faster than float32; without those instructions bfloat16 is converted
    in software and slower."""
    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())


# Configs whose logits are more than the output layer's (a scale other than Gemma's final softcapping).
_OTHER_LOGIT_TRANSFORMS = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def plain_logits(config: Any) -> bool:
    """Whether a model's logits are its output layer's, then capped where final_logit_softcapping is set."""
    return config is not None and all(getattr(config, name, None) in (None, 1, 1.0) for name in _OTHER_LOGIT_TRANSFORMS)


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """The output layer's logits as the model returns them: capped by tanh where the config's
    final_logit_softcapping is set (Gemma 2), else as they are."""
    return torch.tanh(logits / cap) * cap if cap else logits


def training_matmul_dtype(device: str, precision: str) -> torch.dtype | None:
    """The dtype the frozen base's matrix products train in, when it is not the model's own (None): on a CPU,
    bfloat16 as TRAINER_TRAIN_PRECISION says (auto: where the CPU multiplies it natively); a GPU's model is
    bfloat16 already (dtype_for)."""
    if device.startswith("cuda") or precision == "float32":
        return None
    return torch.bfloat16 if precision == "bfloat16" or cpu_multiplies_bfloat16() else None


def set_threads(configured: int) -> int:
    """Give torch one thread per physical core unless configured (cpu_threads); how many it has now."""
    threads = cpu_threads(configured)
    torch.set_num_threads(threads)
    return threads


_threads_lock = threading.Lock()


def use_threads_here(threads: int, others: int = 1) -> None:
    """Run this thread's torch operations on `threads` threads; the process's other threads keep `others`.

    libgomp (torch's OpenMP) lets its threads spin between operations only while the process has no more of them
    than cores, and every thread that ever ran torch on several threads keeps a team of its own. So the server gives
    several threads to its chat engines alone: with one team more, the engine's threads slept and were woken at
    each of a decode step's hundreds of operations, and two threads were no faster than one (docs/trainer.md,
    "Threads on a shared CPU"). torch.set_num_threads sets this thread's count and also the default that other
    threads take when they first use torch; that default is set back from a thread that ends at once."""
    with _threads_lock:
        torch.get_num_threads()  # torch's own set-up of this thread first: it would reset what is set below
        torch.set_num_threads(threads)
        reset = threading.Thread(target=torch.set_num_threads, args=(others,), name="torch-threads-default")
        reset.start()
        reset.join()


def _model_type(source: str) -> str | None:
    path = Path(source)
    try:
        if source.endswith(".gguf"):
            config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return str(config.model_type)


MODEL_TYPE_FILE = "trainer_model_type.txt"


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def _save_atomically(converted: Any, model_type: str | None, folder: Path) -> None:
    """Write a converted tokenizer or model beside its final place, then rename it there: the server and a worker
    may convert the same file at once, and neither must read the other's half-written folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    converted.save_pretrained(str(staging))
    (staging / MODEL_TYPE_FILE).write_text(model_type or "")
    try:
        staging.rename(folder)
    except OSError:  # the other one was first: its copy is the same
        shutil.rmtree(staging, ignore_errors=True)


def load_tokenizer(source: str, cache_dir: Path | None = None) -> PreTrainedTokenizerBase:
    """Load a base model's tokenizer with its family's chat template and a pad token.

    Converting a GGUF's tokenizer takes a minute for Gemma's 262k-token vocabulary, so the converted one is kept
    in cache_dir (keyed by the file's path, size and time) and later loads read it back in a second.
    """
    path = Path(source)
    if source.endswith(".gguf"):
        cached = cache_dir / f"{path.stem}-{_gguf_cache_key(path)}" if cache_dir is not None else None
        if cached is not None and (cached / MODEL_TYPE_FILE).exists():
            tokenizer = AutoTokenizer.from_pretrained(str(cached))
            model_type = (cached / MODEL_TYPE_FILE).read_text().strip() or None
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model_type = _model_type(source)
            if cached is not None:
                _save_atomically(tokenizer, model_type, cached)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model_type = _model_type(source)
    family = apply_family_template(tokenizer, model_type)
    log.info("Chat template of %s: %s", source, family or "its own")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str, device: str, dtype: torch.dtype | None = None,
               cache_dir: Path | None = None) -> PreTrainedModel:
    """Load a base model's weights on a device; GGUF files are dequantized so they can be trained and merged.

    Dequantizing a GGUF takes minutes on a busy CPU, and every job's worker loads its base model: with cache_dir
    the dequantized weights are saved there once (safetensors) and later loads read them back.
    """
    dtype = dtype or dtype_for(device)
    path = Path(source)
    if source.endswith(".gguf"):
        cached = cache_dir / f"{path.stem}-{_gguf_cache_key(path)}" if cache_dir is not None else None
        if cached is not None and (cached / MODEL_TYPE_FILE).exists():
            model = AutoModelForCausalLM.from_pretrained(str(cached), dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                str(path.parent), gguf_file=path.name, quantization_config=GgufConfig(dequantize=True), dtype=dtype
            )
            if cached is not None:
                _save_atomically(model, model.config.model_type, cached)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    log.info("Loaded base model from %s on %s (%s)", source, device, dtype)
    # transformers decorates .to with functools.wraps, whose typeshed type does not bind self like a method does
    # (so mypy wants the model as the first argument, and the result comes back as Any).
    return model.to(device)  # type: ignore[arg-type, no-any-return]
