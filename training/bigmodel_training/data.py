"""From a JSONL file to tokenized train and eval sets, failing with `DatasetError` before any
model is loaded or any GPU time is spent.

1. structure (`dataset.validate_file`): every defect but length, with line numbers;
2. PII redaction of every text field, when enabled (counts by type go into the status);
3. rendering + tokenization, then the length check against `max_seq_length` (second pass);
4. a deterministic train/eval split by the run's seed.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_training.dataset import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_LINE_BYTES,
    TEMPLATE,
    Defect,
    Example,
    ValidationResult,
    check_lengths,
    format_report,
    validate_file,
)
from bigmodel_training.errors import DatasetError
from bigmodel_training.redact import merge_counts, redact_text
from bigmodel_training.render import Renderer, TemplateError, Tokenized

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Tokenized examples ready for packing: lists, or subsets of a memory-mapped token cache
    (tokencache.TokenSubset), which also carry `lengths` and `loss_counts` arrays."""

    train: Any  # Sequence[Tokenized]
    eval: Any  # Sequence[Tokenized]
    redactions: dict[str, int] = field(default_factory=dict)
    lines: int = 0


def lengths_of(items: Any) -> list[int]:
    """Token count of each example."""
    lengths = getattr(items, "lengths", None)
    return [int(n) for n in lengths] if lengths is not None else [len(x) for x in items]


def loss_counts_of(items: Any) -> list[int]:
    """Trained (labelled) positions of each example."""
    counts = getattr(items, "loss_counts", None)
    return [int(n) for n in counts] if counts is not None else [x.loss_tokens for x in items]


def load_and_validate(
    path: Path,
    fmt: Any,
    min_examples: int,
    *,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    keep_examples: bool = True,
) -> ValidationResult:
    """Pass 1; raises DatasetError with the report when anything is wrong (`keep_examples=False`:
    streamed, only the count is kept)."""
    result = validate_file(
        path, fmt, min_examples=min_examples, max_line_bytes=max_line_bytes, max_file_bytes=max_file_bytes,
        keep_examples=keep_examples,
    )  # fmt: skip
    if not result.ok:
        raise DatasetError(result.report())
    return result


def redact_examples(examples: list[Example]) -> dict[str, int]:
    """Redact every text field in place; return the counts by PII type."""
    totals: dict[str, int] = {}
    for example in examples:
        if example.messages is not None:
            for message in example.messages:
                message["content"], counts = redact_text(message["content"])
                merge_counts(totals, counts)
        else:
            example.prompt, c1 = redact_text(example.prompt or "")
            example.completion, c2 = redact_text(example.completion or "")
            merge_counts(merge_counts(totals, c1), c2)
    return totals


def tokenize_checked(examples: list[Example], tokenizer: Any, max_seq_length: int, lines: int = 0) -> list[Tokenized]:
    """Pass 2: tokenize every example; raise DatasetError listing each over-length line."""
    renderer = Renderer(tokenizer)
    tokenized: dict[int, Tokenized] = {}
    unrenderable: list[Defect] = []
    for example in examples:
        try:
            tokenized[example.line] = renderer.tokenize(example)
        except TemplateError as exc:
            unrenderable.append(Defect(example.line, TEMPLATE, str(exc)))
    if unrenderable:
        raise DatasetError(format_report(unrenderable, examples=len(examples), lines=lines))
    if renderer.realigned:
        log.warning(
            "the chat template is not prefix-consistent (e.g. Qwen3's empty <think> block on the last turn only): "
            "the assistant turns of %d multi-turn example(s) were located by their content; all of them are trained",
            renderer.realigned,
        )
    count: Callable[[Example], int] = lambda e: len(tokenized[e.line])  # noqa: E731
    defects = check_lengths(examples, count, max_seq_length)
    no_loss = [e.line for e in examples if tokenized[e.line].loss_tokens == 0]
    if defects:
        raise DatasetError(format_report(defects, examples=len(examples), lines=lines))
    if no_loss:
        raise DatasetError(f"examples with nothing to learn (no completion tokens) on lines {no_loss[:20]}")
    return [tokenized[e.line] for e in examples]


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) example indices, each in dataset order: `fraction` of the examples (at
    least one when fraction > 0) held out, chosen by `seed`."""
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = min(n - 1, max(1, math.floor(n * fraction)))
    held = set(order[:n_eval])
    return [i for i in range(n) if i not in held], sorted(held)


def split(items: list[Tokenized], fraction: float, seed: int) -> tuple[list[Tokenized], list[Tokenized]]:
    """Hold out `fraction` of the examples (at least one when fraction > 0), chosen by `seed`."""
    train, held = split_indices(len(items), fraction, seed)
    return [items[i] for i in train], [items[i] for i in held]


def prepare(
    path: Path,
    fmt: Any,
    tokenizer: Any,
    *,
    max_seq_length: int,
    min_examples: int,
    redact: bool,
    validation_split: float,
    seed: int,
) -> PreparedData:
    """All of the above."""
    result = load_and_validate(path, fmt, min_examples)
    redactions = redact_examples(result.examples) if redact else {}
    tokenized = tokenize_checked(result.examples, tokenizer, max_seq_length, result.lines)
    train, held_out = split(tokenized, validation_split, seed)
    return PreparedData(train, held_out, redactions, result.lines)
