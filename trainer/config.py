"""Settings of the self-hosted trainer, read once from the environment."""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.settings import SettingError, read_number, read_whole
from trainer import cpu_share, launch

log = logging.getLogger(__name__)

# First a multilingual instruct model that speaks Korean and downloads without an account (Apache-2.0, ungated),
# then the fast English one. Why these: docs/trainer.md.
DEFAULT_BASE_MODELS = (
    "qwen2.5-0.5b-instruct=Qwen/Qwen2.5-0.5B-Instruct,"
    "smollm2-135m-instruct=HuggingFaceTB/SmolLM2-135M-Instruct"
)
# Where a generated key is kept, in the data directory, readable by its owner only.
API_KEY_FILE = launch.KEY_FILE
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# A job's adapters folder (Settings.adapters_dir) holds a checkpoint per epoch, CHECKPOINT_PREFIX + its step, and once
# the job succeeded its fine-tuned model, FINAL_FOLDER. Beside a checkpoint's adapter, STATE_FILE: what resuming from
# it needs (optimizer, schedule, place in the data).
CHECKPOINT_PREFIX, FINAL_FOLDER, STATE_FILE = "ckpt-step-", "final", "trainer_state.pt"
# A data directory's caches of what a GGUF base model is converted into, once: its tokenizer, its dequantized weights.
TOKENIZER_CACHE, WEIGHTS_CACHE = "tokenizers", "gguf-weights"


SettingsError = SettingError  # a bad setting, named (never its value)


@dataclass(frozen=True)
class Settings:
    """Everything the server and its workers need to know, validated at startup."""

    host: str = "127.0.0.1"
    port: int = 8400
    api_key: str | None = field(default=None, repr=False)  # None until ensure_api_key() read or made one
    allowed_hosts: tuple[str, ...] = ()  # extra names clients may use in Host (besides IPs and loopback names)
    data_dir: Path = Path("data/trainer")
    base_models: dict[str, str] = field(default_factory=lambda: _parse_models(DEFAULT_BASE_MODELS))
    owner: str = "school"
    device: str = "auto"
    max_batch_rows: int = 32  # chat replies decoded together in one batch per base model
    max_queued_generations: int | None = None  # replies that may wait; None: as many as serving_memory_mb holds
    max_tokens: int = 512
    adapter_cache: int = 64  # fine-tuned models' adapters kept loaded per base model (within adapter_memory_mb)
    adapter_memory_mb: int = 1024
    serving_memory_mb: int = 1024  # the running batch's KV cache
    max_seq_len: int = 1024
    lora_r: int = 16
    lora_alpha: int = 32
    # 3x the 2e-4 of larger models' LoRA recipes: a class's lesson is 30-50 steps, and at 2e-4 a small base's adapter
    # did not hold a taught sign-off (docs/trainer.md, "How fast a lesson learns").
    base_learning_rate: float = 6e-4
    default_batch_size: int = 4
    torch_threads: int = 0  # 0: one per physical core
    max_request_bytes: int = 2 * 1024 * 1024  # JSON bodies; uploads have their own limit
    max_upload_bytes: int = 512 * 1024 * 1024
    max_example_bytes: int = 8 * 1024 * 1024  # one line of an uploaded JSONL file
    max_prompt_tokens: int = 4096
    max_batch_tokens: int = 8192  # batch_size x TRAINER_MAX_SEQ_LEN may not exceed this
    max_job_minutes: float = 60.0  # wall-clock minutes one run of a job may train
    # Jobs of one base model a device's worker trains together, one batched pass per step; 0: 1 on a CPU (measured:
    # no faster per token there, and one after another gives the first students their models sooner), 4 on a GPU.
    group_jobs: int = 0
    # Lanes of a CPU's worker: groups of jobs trained side by side, each on its share of the cores
    # (trainer/cpu_share.py, train_lanes); 0: one a core, at most 4. Its capacity is TRAINER_GROUP_JOBS x lanes.
    train_lanes: int = 0
    # The arithmetic of the frozen base's matrix products in CPU training: auto (bfloat16 where the CPU multiplies
    # bfloat16 natively, trainer.modeling.training_matmul_dtype), float32 or bfloat16. A GPU trains in bfloat16.
    train_precision: str = "auto"
    # Once the chat models are ready, the CPU's worker trains a few steps of a shipped lesson on each base model, so the
    # queue's first estimates use this machine's real training speed (trainer/worker.py, _measure); 0 leaves them to
    # the forward pass timed at load.
    measure_speed: bool = True
    # Started by the bot: a private Unix socket instead of host:port, and an end with the bot (trainer/launch.py).
    socket: Path | None = None
    exit_with_parent: bool = False

    @property
    def max_batch_size(self) -> int:
        """The largest batch_size a job may ask for: what fits in TRAINER_MAX_BATCH_TOKENS at full length."""
        return max(1, self.max_batch_tokens // self.max_seq_len)

    @property
    def tokenizer_cache(self) -> Path:
        """Where converted GGUF tokenizers are kept."""
        return self.data_dir / TOKENIZER_CACHE

    def adapters_dir(self, job_id: str) -> Path:
        """A job's saved adapters: its checkpoints, and once it succeeded its fine-tuned model (final_adapter)."""
        return self.data_dir / "adapters" / job_id

    def final_adapter(self, job_id: str) -> Path:
        """Where a succeeded job's fine-tuned model (its LoRA adapter) is saved."""
        return self.adapters_dir(job_id) / FINAL_FOLDER

    @property
    def weights_cache(self) -> Path:
        """Where dequantized GGUF weights are kept."""
        return self.data_dir / WEIGHTS_CACHE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment, raising SettingsError naming the first bad one."""
        env = os.environ if env is None else env
        settings = cls(
            host=env.get(launch.HOST_VAR, launch.DEFAULT_HOST).strip() or launch.DEFAULT_HOST,
            port=read_whole(env, launch.PORT_VAR, launch.DEFAULT_PORT, low=0, high=65535),
            api_key=(env.get(launch.API_KEY_VAR) or "").strip() or None,
            allowed_hosts=tuple(h.strip().lower() for h in env.get("TRAINER_ALLOWED_HOSTS", "").split(",")
                                if h.strip()),
            # Absolute from the start: paths stored in its database must not depend on where a later start runs from.
            data_dir=Path(env.get(launch.DATA_DIR_VAR, "").strip() or "data/trainer").expanduser().resolve(),
            base_models=_models(env),
            owner=_owner(env),
            device=_device(env),
            # TRAINER_MAX_CONCURRENT_GENERATIONS is the old name of the batch's rows (replies generated at once).
            max_batch_rows=read_whole(env, "TRAINER_MAX_BATCH_ROWS",
                                      read_whole(env, "TRAINER_MAX_CONCURRENT_GENERATIONS", 32, low=1), low=1),
            max_queued_generations=(read_whole(env, "TRAINER_MAX_QUEUED_GENERATIONS", 0, low=0)
                                    if env.get("TRAINER_MAX_QUEUED_GENERATIONS", "").strip() else None),
            max_tokens=read_whole(env, "TRAINER_MAX_TOKENS", 512, low=1),
            adapter_cache=read_whole(env, "TRAINER_ADAPTER_CACHE", 64, low=1),
            adapter_memory_mb=read_whole(env, "TRAINER_ADAPTER_MEMORY_MB", 1024, low=1),
            serving_memory_mb=read_whole(env, "TRAINER_SERVING_MEMORY_MB", 1024, low=1),
            max_seq_len=read_whole(env, "TRAINER_MAX_SEQ_LEN", 1024, low=16),
            lora_r=read_whole(env, "TRAINER_LORA_R", 16, low=1),
            lora_alpha=read_whole(env, "TRAINER_LORA_ALPHA", 32, low=1),
            base_learning_rate=read_number(env, "TRAINER_BASE_LEARNING_RATE", 6e-4, positive=True),
            default_batch_size=read_whole(env, "TRAINER_DEFAULT_BATCH_SIZE", 4, low=1),
            torch_threads=read_whole(env, "TRAINER_TORCH_THREADS", 0, low=0),
            max_request_bytes=read_whole(env, "TRAINER_MAX_REQUEST_BYTES", 2 * 1024 * 1024, low=1024),
            max_upload_bytes=read_whole(env, "TRAINER_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, low=1024,
                                  high=512 * 1024 * 1024),
            max_example_bytes=read_whole(env, "TRAINER_MAX_EXAMPLE_BYTES", 8 * 1024 * 1024, low=1024),
            max_prompt_tokens=read_whole(env, "TRAINER_MAX_PROMPT_TOKENS", 4096, low=1),
            max_batch_tokens=read_whole(env, "TRAINER_MAX_BATCH_TOKENS", 8192, low=16),
            max_job_minutes=read_number(env, "TRAINER_MAX_JOB_MINUTES", 60.0, positive=True),
            group_jobs=read_whole(env, "TRAINER_GROUP_JOBS", 0, low=0),
            train_lanes=read_whole(env, "TRAINER_TRAIN_LANES", 0, low=0),
            train_precision=_train_precision(env),
            measure_speed=env.get("TRAINER_MEASURE_SPEED", "1").strip() != "0",
            socket=Path(raw_socket) if (raw_socket := env.get(launch.SOCKET_VAR, "").strip()) else None,
            exit_with_parent=env.get(launch.EXIT_WITH_PARENT_VAR, "").strip() == "1",
        )
        if settings.api_key is not None and (len(settings.api_key) < 16 or any(c.isspace() for c in settings.api_key)):
            raise SettingsError("TRAINER_API_KEY", "must be at least 16 characters without spaces")
        return settings

    @property
    def host_names(self) -> frozenset[str]:
        """The names a client may put in the Host header (IP addresses are always accepted)."""
        return frozenset({self.host.lower(), *LOOPBACK_NAMES, *self.allowed_hosts})

    def lanes(self, device: str) -> int:
        """How many lanes the device's worker trains in (trainer.cpu_share.train_lanes)."""
        return cpu_share.train_lanes(device, self.train_lanes, self.torch_threads)

    def to_env(self) -> dict[str, str]:
        """Write these settings back as environment variables, for the worker processes."""
        values = {
            "TRAINER_HOST": self.host, "TRAINER_PORT": self.port, "TRAINER_DATA_DIR": self.data_dir.resolve(),
            "TRAINER_BASE_MODELS": ",".join(f"{name}={source}" for name, source in self.base_models.items()),
            "TRAINER_OWNER": self.owner, "TRAINER_DEVICE": self.device,
            "TRAINER_MAX_BATCH_ROWS": self.max_batch_rows,
            "TRAINER_MAX_QUEUED_GENERATIONS": ("" if self.max_queued_generations is None
                                               else self.max_queued_generations),
            "TRAINER_MAX_TOKENS": self.max_tokens, "TRAINER_ADAPTER_CACHE": self.adapter_cache,
            "TRAINER_ADAPTER_MEMORY_MB": self.adapter_memory_mb, "TRAINER_SERVING_MEMORY_MB": self.serving_memory_mb,
            "TRAINER_MAX_SEQ_LEN": self.max_seq_len,
            "TRAINER_LORA_R": self.lora_r, "TRAINER_LORA_ALPHA": self.lora_alpha,
            "TRAINER_BASE_LEARNING_RATE": self.base_learning_rate,
            "TRAINER_DEFAULT_BATCH_SIZE": self.default_batch_size, "TRAINER_TORCH_THREADS": self.torch_threads,
            "TRAINER_ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "TRAINER_MAX_REQUEST_BYTES": self.max_request_bytes, "TRAINER_MAX_UPLOAD_BYTES": self.max_upload_bytes,
            "TRAINER_MAX_EXAMPLE_BYTES": self.max_example_bytes, "TRAINER_MAX_PROMPT_TOKENS": self.max_prompt_tokens,
            "TRAINER_MAX_BATCH_TOKENS": self.max_batch_tokens, "TRAINER_MAX_JOB_MINUTES": self.max_job_minutes,
            "TRAINER_GROUP_JOBS": self.group_jobs, "TRAINER_TRAIN_LANES": self.train_lanes,
            "TRAINER_TRAIN_PRECISION": self.train_precision, "TRAINER_MEASURE_SPEED": int(self.measure_speed),
        }
        env = {name: str(value) for name, value in values.items()}
        if self.api_key:
            env["TRAINER_API_KEY"] = self.api_key
        return env


def ensure_api_key(settings: Settings) -> Settings:
    """Settings with a key: the configured one, else the one generated at first start and kept in the data directory.

    The trainer never answers without a key: any local process or web page could otherwise train and chat on it."""
    if settings.api_key is not None:
        return settings
    path = settings.data_dir / API_KEY_FILE
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: two processes starting at once agree on one key (the second reads the first one's).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)  # someone widened it: readable by the owner only, as promised
        key = path.read_text("utf-8").strip()
        if len(key) < 16:
            raise SettingsError("TRAINER_API_KEY", f"the key file {path} is empty or damaged; delete it to make a new one")
        return replace(settings, api_key=key)
    key = "sk-trainer-" + secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(key + "\n")
    log.info("Generated the trainer's API key in %s (readable by its owner only)", path)
    return replace(settings, api_key=key)


def is_ip_address(host: str) -> bool:
    """Tell whether a Host value (without its port) is an IP literal rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _parse_models(raw: str) -> dict[str, str]:
    models: dict[str, str] = {}
    for pair in raw.split(","):
        if not pair.strip():
            continue
        name, sep, source = pair.partition("=")
        name, source = name.strip(), source.strip()
        # ':' would break the ft:<base>:<owner>:<suffix>:<id> naming, '/' the URL paths.
        if not sep or not name or not source or ":" in name or "/" in name or name in models:
            raise SettingsError("TRAINER_BASE_MODELS", "must be comma-separated name=source pairs with unique names")
        models[name] = source
    if not models:
        raise SettingsError("TRAINER_BASE_MODELS", "must name at least one model")
    return models


def _models(env: Mapping[str, str]) -> dict[str, str]:
    return _parse_models(env.get(launch.BASE_MODELS_VAR, "").strip() or DEFAULT_BASE_MODELS)


def _owner(env: Mapping[str, str]) -> str:
    owner = env.get("TRAINER_OWNER", "school").strip() or "school"
    if ":" in owner or "/" in owner:
        raise SettingsError("TRAINER_OWNER", "must not contain ':' or '/'")
    return owner


TRAIN_PRECISIONS = ("auto", "float32", "bfloat16")


def _train_precision(env: Mapping[str, str]) -> str:
    precision = env.get("TRAINER_TRAIN_PRECISION", "auto").strip().lower() or "auto"
    if precision not in TRAIN_PRECISIONS:
        raise SettingsError("TRAINER_TRAIN_PRECISION", "must be auto, float32 or bfloat16")
    return precision


def _device(env: Mapping[str, str]) -> str:
    device = env.get("TRAINER_DEVICE", "auto").strip() or "auto"
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise SettingsError("TRAINER_DEVICE", "must be auto, cpu, cuda or cuda:N")
    return device
