"""The chat engine's KV cache: layers that keep room to grow, so a decode step writes its token in place.

transformers' DynamicLayer appends each step's keys and values with torch.cat, which copies the whole cache of the
batch at every step of every layer (30 rows of a class at 80 tokens: about 70 MB a step on SmolLM2-135M). These
layers keep keys and values in buffers with room for SLACK more tokens and expose the filled part as a view; a step
writes into the room and copies only when it runs out (once per SLACK steps). Setting .keys and .values (the engine
does, to join, reorder or cut rows) replaces the buffers with exactly what was set, so a step after that copies once.
The arithmetic is unchanged: attention reads the same keys and values (a test compares the logits).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

# Tokens of room a layer's buffers keep past its filled length when they grow.
SLACK = 32


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room to grow."""

    _key_buffer: torch.Tensor | None = None
    _value_buffer: torch.Tensor | None = None
    _length = 0  # tokens filled; keys and values may be set one after the other, so values keep their own
    _value_length = 0

    @property
    def keys(self) -> torch.Tensor | None:
        return None if self._key_buffer is None else self._key_buffer[:, :, : self._length]

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._key_buffer, self._length = value, _filled(value)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self._value_buffer is None else self._value_buffer[:, :, : self._value_length]

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._value_buffer, self._value_length = value, _filled(value)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new keys and values after the filled part (growing the buffers when full); return the filled
        part, as DynamicLayer.update does."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self._length, key_states.shape[-2]
        assert self._value_length == length, "keys and values were set to different lengths"
        keys, values = self._key_buffer, self._value_buffer
        if (keys is None or values is None or keys.dim() != 4 or keys.shape[-2] < length + new
                or keys.shape[:2] != key_states.shape[:2]):
            shape = (*key_states.shape[:2], length + new + SLACK, key_states.shape[-1])
            grown_keys, grown_values = key_states.new_empty(shape), value_states.new_empty(shape)
            if length and keys is not None and values is not None:
                grown_keys[:, :, :length] = keys[:, :, :length]
                grown_values[:, :, :length] = values[:, :, :length]
            keys, values = self._key_buffer, self._value_buffer = grown_keys, grown_values
        keys[:, :, length : length + new] = key_states
        values[:, :, length : length + new] = value_states
        self._length = self._value_length = length + new
        return keys[:, :, : self._length], values[:, :, : self._length]


def _filled(tensor: torch.Tensor | None) -> int:
    """The tokens a layer's keys or values hold (DynamicLayer starts them as an empty 1-d tensor)."""
    return tensor.shape[-2] if tensor is not None and tensor.dim() == 4 else 0


def growing_cache() -> DynamicCache:
    """An empty cache whose layers are GrowingLayers (made as the model's layers first write to it)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache
