"""The engine's growing KV cache gives the model exactly what transformers' own cache gives it, step after step,
across the buffers' growth and after the engine replaces a layer's keys and values (rows reordered or cut)."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from trainer import kv_cache
from trainer.kv_cache import growing_cache
from trainer.serving import ModelPool

from .test_serving import pool  # noqa: F401  (module fixture)


def test_growing_cache_decodes_like_the_dynamic_cache(pool: ModelPool) -> None:  # noqa: F811
    model, _ = pool.base("tiny")
    ids = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(7))
    caches = [DynamicCache(), growing_cache()]
    steps = 2 * kv_cache.SLACK + 5  # the buffers grow at least twice
    with torch.inference_mode():
        outputs = [model(input_ids=ids, past_key_values=cache, use_cache=True).logits for cache in caches]
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
        last = outputs[0][:, -1:].argmax(-1)
        for step in range(steps):
            if step == kv_cache.SLACK // 2:  # the engine reorders and cuts rows by setting keys and values
                for cache in caches:
                    for layer in cache.layers:
                        layer.keys = layer.keys[[2, 0]][:, :, 1:]  # one after the other, as the engine does
                        layer.values = layer.values[[2, 0]][:, :, 1:]
                last = last[[2, 0]]
            outputs = [model(input_ids=last, past_key_values=cache, use_cache=True).logits for cache in caches]
            torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
            last = outputs[0][:, -1:].argmax(-1)
    assert [layer.keys.shape for layer in caches[1].layers] == [layer.keys.shape for layer in caches[0].layers]
    assert all(type(layer) is kv_cache.GrowingLayer for layer in caches[1].layers)
