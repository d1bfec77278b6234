"""A large vocabulary's output layer for the chat engine: multiplied in bfloat16, made exact where sampling looks.

Gemma 3's output layer (262,144 tokens x 640) is tied to its embeddings: 671 MB of float32 read at every decode step.
On this machine's 2 cores MKL's sgemm takes 160-175 ms of it for 10 rows, on one thread or two, of a 250-300 ms step
(docs/benchmarks.md, "A Korean class chatting at once"); a packed float32 copy would add 671 MB (trainer/packed.py). A
bfloat16 copy packed for oneDNN takes 335 MB and 21-35 ms, but its logits are off by up to half a unit.

Sampling only ever looks at each row's best k tokens (top-k, then top-p within them; greedy: the best one). So the
engine takes each row's CANDIDATES best tokens by the bfloat16 logits, computes those in float32 from the tied weight,
and proves with a bound on bfloat16's error that no other token can be among the best k. A row where the bound cannot
tell (a flat distribution) gets every token that could be, in float32 too. The tokens drawn are those the float32
layer gives; every other token's logit is -inf, which no sampling rule reads.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.modeling import softcapped

# Tokens per row computed in float32. For k = 64 (Gemma 3's top_k), a Korean and an English chat's 101 positions
# needed 146 at the median, 202 at the 90th percentile; 2 in 100 needed thousands (those rows take the slow way).
CANDIDATES = 512
# Beyond this share of the vocabulary a row's best k are computed whole (top_k 0: every token counts).
WHOLE_SHARE = 0.25
_UNIT = 2.0**-8  # bfloat16's unit roundoff: 8 significant bits, rounded to nearest
_FLOAT32_UNIT = 2.0**-24


class ShortlistHead(nn.Module):
    """An output layer tied to the embeddings: float32 as before, except inside approximate() on the engine's thread,
    where it returns bfloat16 logits and keeps its input for exact_top."""

    in_features: int
    out_features: int
    weight: nn.Parameter
    bias: None
    softcap: float | None
    packed: torch.Tensor
    _input_error: float
    _output_error: float
    _local: threading.local

    def __init__(self, linear: nn.Linear, softcap: float | None = None) -> None:
        nn.Module.__init__(self)
        if linear.bias is not None:
            raise ValueError("a shortlisted output layer has no bias")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # the embeddings' own: kept once, shared
        self.bias = None
        self.softcap = softcap  # the model's final tanh cap (Gemma 2): applied to the exact logits too
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(torch.bfloat16), None)
        # |bf16 logit - exact| <= |x| * max|W_j| * (2u + u^2 + float32 sums) + u/(1-u) * |raw bf16 logit|, per row
        # (Cauchy-Schwarz on the rounded inputs, then the output's own rounding); the cap is 1-Lipschitz. 1% more,
        # and the float32 sums of both exact paths once more, for rounding in the bound itself.
        sums = 2 * self.in_features * _FLOAT32_UNIT
        self._input_error = 1.01 * float(weight.norm(dim=1).max()) * (2 * _UNIT + _UNIT**2 + 2 * sums)
        self._output_error = 1.01 * _UNIT / (1 - _UNIT)
        self._local = threading.local()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W.T: in float32, or in bfloat16 inside approximate() (the input kept for exact_top)."""
        if not getattr(self._local, "approximate", False):
            return F.linear(x, self.weight)
        raw: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), self.packed, None, "none", [],
                                                                "").float()
        flat = x.reshape(-1, self.in_features).float()
        self._local.kept = (flat, flat.norm(dim=1) * self._input_error
                            + raw.reshape(-1, self.out_features).abs().amax(dim=1) * self._output_error)
        return raw

    @contextmanager
    def approximate(self) -> Iterator[None]:
        """This thread's forwards give bfloat16 logits until the block ends (exact_top must then be called in it)."""
        self._local.approximate, self._local.kept = True, None
        try:
            yield
        finally:
            self._local.approximate, self._local.kept = False, None

    def exact_top(self, scores: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
        """The float32 logits (rows, vocab) of every token that can be among each row's best k, -inf elsewhere.

        logits: what the model returned for the latest forward in approximate() (bfloat16 values, capped as the model
        caps them); scores: those after the caller's own changes (tokens it suppresses at -inf, penalties), by which
        the best k are ranked. The caller applies its changes to the result again, as to a float32 layer's logits."""
        kept = self._local.kept
        if kept is None:
            raise RuntimeError("exact_top needs a forward inside approximate() first")
        hidden, error = kept
        rows, vocab = scores.shape
        k = max(1, min(k, vocab))
        if k > vocab * WHOLE_SHARE:
            return softcapped(F.linear(hidden, self.weight), self.softcap)
        take = min(vocab, max(CANDIDATES, 2 * k))
        values, ids = torch.topk(scores, min(vocab, take + 1), dim=-1)
        ids = ids[:, :take]
        exact = softcapped(torch.bmm(self.weight.index_select(0, ids.reshape(-1)).view(rows, take, -1),
                                     hidden[:, :, None]).squeeze(-1), self.softcap)
        # The candidates ranked with the caller's changes (the difference its own changes made to each one).
        changed = exact + (values[:, :take] - logits.gather(1, ids))
        kth = torch.topk(changed.nan_to_num(float("-inf")), k, dim=-1).values[:, -1]
        best_other = values[:, take] if take < vocab else torch.full_like(kth, float("-inf"))
        result = torch.full_like(scores, float("-inf")).scatter_(1, ids, exact)
        for row in torch.nonzero(best_other + error >= kth).flatten().tolist():
            # The bound cannot rule out every other token: compute each one that could beat the k-th best found.
            could = torch.nonzero(scores[row] + error[row] >= kth[row]).flatten()
            result[row, could] = softcapped(self.weight.index_select(0, could) @ hidden[row], self.softcap)
        return result

    def __deepcopy__(self, memo: dict[int, Any]) -> nn.Linear:
        # A copy (to merge an adapter into) is an ordinary Linear, still tied as before (trainer/packed.py).
        linear = nn.Linear(self.in_features, self.out_features, bias=False, device="meta")
        linear.weight = copy.deepcopy(self.weight, memo)
        memo[id(self)] = linear
        return linear
