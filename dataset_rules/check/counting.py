"""Token counting of the examples that can be trained on, a block at a time on the tokenizer threads while the next
block is parsed; per-format totals and the examples longer than the model takes."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import tiktoken

from dataset_rules import tokens
from dataset_rules.check.report import Recorder

BLOCK_BYTES = 1 << 20  # parse ~1 MB of lines, then hand its texts to the tokenizer threads
REPEAT_CACHE_SIZE = 256  # distinct system prompts remembered (a file rarely has more than a handful)
MAX_MIXED_LINES = 50  # lines remembered per format, to point at with mixed_formats

# (line, format, first text index, end text index, fixed overhead) per example that counts
Span = tuple[int, str, int, int, int]


@dataclass
class FormatStats:
    """Totals for the examples of one format in one file."""

    examples: int = 0
    trainable: int = 0
    tokens: int = 0
    capped_tokens: int = 0
    max_tokens: int = 0
    first_line: int = 0
    lines: list[int] = field(default_factory=list)  # the first few lines, to point at with mixed_formats


@dataclass
class Pending:
    """One parsed block waiting for its token counts."""

    futures: list[Future[list[int]]]
    spans: list[Span]
    repeats: list[tuple[int, str]]  # (text index, text) of system prompts to remember once counted


class TokenCounter:
    """Counts blocks of texts and adds each example's tokens to its format's totals."""

    def __init__(self, encoding: tiktoken.Encoding, token_limit: int, recorder: Recorder,
                 repeat_cache: dict[str, int], new_repeats: list[tuple[int, str]]) -> None:
        self.encoding, self.token_limit = encoding, token_limit
        self._add = recorder.add
        # Shared with the example rules, which skip a system prompt already counted and note new ones.
        self.repeat_cache, self.new_repeats = repeat_cache, new_repeats

    def submit(self, texts: list[str], spans: list[Span]) -> Pending:
        """Start counting a block's texts on the tokenizer threads while the next block is parsed."""
        repeats = self.new_repeats[:]
        self.new_repeats.clear()
        return Pending(tokens.submit_counts(self.encoding, texts), spans, repeats)

    def finish(self, pending: Pending, stats: dict[str, FormatStats], order: int, file_label: str) -> None:
        """Add a counted block's per-example tokens to the totals; warn about examples over the limit."""
        counts: list[int] = []
        for future in pending.futures:
            counts.extend(future.result())
        for index, text in pending.repeats:
            if len(self.repeat_cache) < REPEAT_CACHE_SIZE:
                self.repeat_cache[text] = counts[index]
        limit = self.token_limit
        for line_no, fmt, start, end, overhead in pending.spans:
            n = overhead + sum(counts[start:end])
            st = stats[fmt]
            st.tokens += n
            st.capped_tokens += min(n, limit)
            st.max_tokens = max(st.max_tokens, n)
            if n > limit:
                self._add(line_no, "example_too_long", order, file_label, tokens=n, limit=limit)
