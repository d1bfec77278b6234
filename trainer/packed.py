"""A served base model's Linear layers with their weights packed once for oneDNN (CPU only).

A decode step of a class multiplies 30 rows by every weight matrix. MKL's sgemm, which nn.Linear calls, repacks the
weight on every call; at 30 rows that repacking costs about as much as the arithmetic (and the vocabulary-sized
output layer ran at half the rate of the others). oneDNN's linear with its weight reordered once is 1.3x faster on
the model's layers and 2.3x on the output layer, measured on this machine's 2 cores (docs/benchmarks.md). The
packed layers are what torch's own compiler uses for CPU inference with frozen weights (mkldnn._linear_pointwise).
The served model is never trained, so each packed weight replaces the original (the same memory); an output layer
that shares its weight with the embeddings keeps it and is packed as a copy only when that copy is small, and a copy
of a packed model gets ordinary Linear layers.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from trainer.modeling import cpu_multiplies_bfloat16, plain_logits
from trainer.shortlist import ShortlistHead

log = logging.getLogger(__name__)

# A tied output layer's packed copy may add at most this share of the model's weights to its memory.
TIED_COPY_SHARE = 0.25


class PackedLinear(nn.Linear):
    """A Linear that multiplies through oneDNN with its weight in oneDNN's own layout (for inference only)."""

    def __init__(self, linear: nn.Linear, keep_weight: bool) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate a fresh weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.weight: Any = linear.weight if keep_weight else None
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T + b, by oneDNN on the packed weight."""
        bias = None if self.bias is None else self.bias.detach()
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, "none", [], "")
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Linear:
        # oneDNN's packed tensors cannot be copied; a copy (say, to merge an adapter into) is an ordinary Linear with
        # the same values (the packed layout only reorders them), still sharing a weight it shared before.
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = (copy.deepcopy(self.weight, memo) if self.weight is not None
                         else nn.Parameter(self.packed.to_dense().clone()))
        linear.bias = copy.deepcopy(self.bias, memo)
        memo[id(self)] = linear
        return linear


def pack_linears(model: nn.Module) -> int:
    """Replace a CPU model's Linear layers by packed ones, in place; how many were packed (0 where oneDNN can't)."""
    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return 0
    shared = {id(p) for module in model.modules() if not isinstance(module, nn.Linear)
              for p in module.parameters(recurse=False)}  # an output layer tied to the embeddings
    weights = sum(p.numel() for p in model.parameters())
    output = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    packed = 0
    for name, module in list(model.named_modules()):
        if type(module) is not nn.Linear:
            continue
        tied = id(module.weight) in shared
        if tied and module.weight.numel() > weights * TIED_COPY_SHARE:
            # A tied output layer is packed as a copy (the embeddings still need the plain weight): worth it for a
            # small vocabulary (SmolLM2: 113 MB, a fifth of the model), not for Qwen2.5's or Gemma 3's (545-671 MB).
            # Those get a bfloat16 copy, half the size, that the chat engine corrects to float32 (trainer/shortlist).
            config = getattr(model, "config", None)
            if id(module) == id(output) and module.bias is None and plain_logits(config) and cpu_multiplies_bfloat16():
                model.set_submodule(name, ShortlistHead(module, getattr(config, "final_logit_softcapping", None)))
            continue
        try:
            model.set_submodule(name, PackedLinear(module, keep_weight=tied))
        except (RuntimeError, AttributeError):  # an op this torch build lacks: the layer stays as it was
            log.warning("Could not pack %s for oneDNN; it stays an ordinary Linear", name, exc_info=True)
            continue
        packed += 1
    if packed:
        # The weights may be mapped from the model's file (safetensors): once read for packing, those pages stay
        # resident while any tensor still maps the file. Copying the few that remain (embeddings, norms) lets the
        # mapping go, so the packed copies replace the weights in memory instead of doubling them.
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return packed
