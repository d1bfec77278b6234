"""Benchmark: check-dataset against the OpenAI cookbook's plain method on the same chat file (not a test).

Run: python bench/bench_dataset.py [--repeat 3] [--examples 20000]   (about 20 MB, ~20,000 examples)
     python bench/bench_dataset.py --big [--big-mb 500]              (peak memory of a 500 MB check, in a subprocess)
Prints both times, the ratio and both token totals; exits 1 if the totals differ.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dataset_rules import tokens
from dataset_rules.check import check_stream

MODEL = "gpt-4o-mini-2024-07-18"
SYSTEM = "You are a kind science tutor for a high-school class. Answer clearly, in two or three sentences."
EN = [
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "model", "learning", "student", "class",
    "teacher", "answer", "question", "why", "because", "data", "train", "photosynthesis", "energy", "planet",
]
KO = ["안녕하세요", "학생", "선생님", "질문", "답변", "모델", "학습", "데이터", "왜냐하면", "그래서", "오늘", "내일", "수업"]


def _text(rng: random.Random, words: int) -> str:
    """Return English text with about a fifth Korean words, like a bilingual class's data."""
    return " ".join(rng.choice(KO) if rng.random() < 0.2 else rng.choice(EN) for _ in range(words))


def generate(path: Path, examples: int, seed: int = 1) -> None:
    """Write a chat JSONL file of unique examples (~1 KB each) with one shared system prompt."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for i in range(examples):
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"({i}) " + _text(rng, 35)},
                        {"role": "assistant", "content": _text(rng, 82)}]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


T = TypeVar("T")


def read_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """Yield the file in 1 MB chunks (what the bot's service does)."""
    with open(path, "rb") as handle:
        while chunk := handle.read(size):
            yield chunk


def cookbook_count(path: Path) -> int:
    """The cookbook's plain method: json.loads per line, encoding.encode per message value."""
    encoding = tokens.get_encoding("o200k_base")
    total = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            messages = json.loads(line)["messages"]
            num_tokens = 0
            for message in messages:
                num_tokens += 3
                for key, value in message.items():
                    num_tokens += len(encoding.encode(value))
                    if key == "name":
                        num_tokens += 1
            num_tokens += 3
            total += num_tokens
    return total


def ours_count(path: Path) -> int:
    """This project's checker, streaming 1 MB chunks."""
    report = check_stream(read_chunks(path), model=MODEL)
    if not report.ok:
        raise SystemExit(f"benchmark file did not pass the check: {report.error_counts}")
    return report.tokens_total


def timed(fn: Callable[[Path], T], path: Path) -> tuple[float, float, T, float]:
    """Return (wall seconds, process cpu seconds, result, this thread's cpu seconds)."""
    wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
    result = fn(path)
    return time.perf_counter() - wall, time.process_time() - cpu, result, time.thread_time() - own


def bench(examples: int, repeat: int) -> int:
    """Time both methods on the same file, best of `repeat`, interleaved so load changes hit both."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        generate(path, examples)
        size_mb = path.stat().st_size / 1e6
        tokens.get_encoding("o200k_base")  # both methods start with the encoding loaded
        ours_runs, cook_runs = [], []
        for _ in range(repeat):
            cook_runs.append(timed(cookbook_count, path))
            ours_runs.append(timed(ours_count, path))
        cook, ours = min(cook_runs), min(ours_runs)
        print(f"file: {size_mb:.1f} MB, {examples:,} examples; cores: {os.cpu_count()}; "
              f"load average: {os.getloadavg()[0]:.2f}; best of {repeat}")
        print(f"cookbook (json.loads + tiktoken per message): {cook[0]:.3f} s wall, {cook[1]:.3f} s cpu, "
              f"{cook[2]:,} tokens, {size_mb / cook[0]:.1f} MB/s")
        print(f"check-dataset (dataset_rules.check):          {ours[0]:.3f} s wall, {ours[1]:.3f} s cpu, "
              f"{ours[2]:,} tokens, {size_mb / ours[0]:.1f} MB/s")
        print(f"ratio (cookbook time / ours): {cook[0] / ours[0]:.2f}x; totals identical: {cook[2] == ours[2]}")
        # On a shared machine wall times lie; CPU seconds do not. The parsing thread and the tokenizer threads
        # overlap, so on 2 idle cores ours needs about max(parse thread, all CPU / 2).
        ideal = max(ours[3], ours[1] / 2)
        print(f"ours: parsing thread {ours[3]:.3f} s cpu, tokenizer threads {ours[1] - ours[3]:.3f} s cpu; "
              f"on 2 idle cores ~{ideal:.2f} s, ~{cook[1] / ideal:.1f}x the cookbook's {cook[1]:.2f} s (estimate)")
        return 0 if cook[2] == ours[2] else 1


_CHILD = """
import resource, sys, time
sys.path.insert(0, {root!r})
from dataset_rules import tokens
from dataset_rules.check import check_stream
tokens.get_encoding("o200k_base")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def chunks(path):
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            yield chunk
start = time.perf_counter()
report = check_stream(chunks({path!r}), model={model!r})
print(report.examples, report.tokens_total, round(time.perf_counter() - start, 1), base, report.ok)
"""


def big(size_mb: int) -> int:
    """Check a file of `size_mb` MB of unique examples in a subprocess and report its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        seed_file, path = Path(tmp) / "seed.jsonl", Path(tmp) / "big.jsonl"
        generate(seed_file, 20_000)
        base_lines = seed_file.read_text(encoding="utf-8").splitlines()
        marker = '"role": "user", "content": "'
        written, copy = 0, 0
        with open(path, "w", encoding="utf-8") as out:
            while written < size_mb * 1_000_000 - 2_000:
                for line in base_lines:
                    # A copy number in every user message keeps all examples unique, as in a real file.
                    text = line.replace(marker, f"{marker}[{copy}] ", 1) + "\n"
                    out.write(text)
                    written += len(text.encode("utf-8"))
                    if written >= size_mb * 1_000_000 - 2_000:
                        break
                copy += 1
        code = _CHILD.format(root=str(ROOT), path=str(path), model=MODEL)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        examples, total, seconds, base_kb, ok = proc.stdout.split()
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"big file: {path.stat().st_size / 1e6:.0f} MB, {int(examples):,} examples, {int(total):,} tokens, "
              f"{seconds} s, ok={ok}")
        print(f"peak RSS of the checking process: {peak_mb:.0f} MB "
              f"(of which Python + tiktoken with the encoding loaded: {int(base_kb) / 1024:.0f} MB)")
        return 0 if peak_mb < 150 else 1


def main() -> int:
    """Parse arguments and run the chosen benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="check a big file in a subprocess; report peak RSS")
    parser.add_argument("--big-mb", type=int, default=500)
    args = parser.parse_args()
    return big(args.big_mb) if args.big else bench(args.examples, args.repeat)


if __name__ == "__main__":
    sys.exit(main())
