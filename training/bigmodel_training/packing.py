"""Packing, batching and collation: deterministic per (seed, epoch), so a resumed run sees the
same batches in the same order as an uninterrupted one.

Packing: examples are shuffled, then placed best-fit into rows of at most `max_seq_length`
tokens. Inside a row each example keeps its own position ids (0, 1, 2, ... restarting at every
example) and no attention mask is passed: transformers then derives a block-diagonal causal mask
from the position ids (`find_packed_sequence_indices`), so packed examples never attend to each
other, and RoPE sees the same positions as for an unpacked example. The first label of every
example is -100, so no loss crosses an example boundary either. Rows of one micro-batch are padded
to the longest row with pad tokens whose labels are -100 and whose positions restart at 0 (they
form their own "example" and are never attended to by real tokens).

Without packing, every row holds one example and rows are padded to the longest in the
micro-batch with a 2-D attention mask.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bigmodel_training.render import IGNORE_INDEX, Tokenized

if TYPE_CHECKING:
    import torch

# Rows are padded to a multiple of this: few distinct shapes keep the CPU's matmul kernels cached
# (each new shape costs oneDNN milliseconds) and GPU matmuls on tensor-core-friendly sizes.
PAD_MULTIPLE = 64
Row = list[int]  # indices of the examples packed into one sequence
MicroBatch = list[Row]
Step = list[MicroBatch]


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def pack_rows(lengths: Sequence[int], order: Sequence[int], max_len: int) -> list[Row]:
    """Best-fit packing of examples (in `order`) into rows of at most `max_len` tokens."""
    rows: list[Row] = []
    free: list[tuple[int, int]] = []  # (remaining space, row index), sorted
    for index in order:
        length = lengths[index]
        if length > max_len:
            raise ValueError(f"example {index} has {length} tokens, more than {max_len}")
        at = bisect.bisect_left(free, (length, -1))
        if at < len(free):
            space, row = free.pop(at)
            rows[row].append(index)
            space -= length
        else:
            rows.append([index])
            row, space = len(rows) - 1, max_len - length
        if space > 0:
            bisect.insort(free, (space, row))
    return rows


def epoch_steps(
    lengths: Sequence[int],
    *,
    seed: int,
    epoch: int,
    max_len: int,
    batch_size: int,
    accumulation: int,
    packing: bool,
) -> list[Step]:
    """All optimizer steps of one epoch: steps → micro-batches → rows → example indices."""
    order = epoch_order(len(lengths), seed, epoch)
    rows = pack_rows(lengths, order, max_len) if packing else [[i] for i in order]
    micro = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return [micro[i : i + accumulation] for i in range(0, len(micro), accumulation)]


def eval_batches(lengths: Sequence[int], *, max_len: int, batch_size: int, packing: bool) -> list[MicroBatch]:
    """Micro-batches for evaluation, in dataset order."""
    order = list(range(len(lengths)))
    rows = pack_rows(lengths, order, max_len) if packing else [[i] for i in order]
    return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]


@dataclass
class Batch:
    """Tensors for one micro-batch; `attention_mask` is None for packed batches."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    tokens: int  # real (non-padding) tokens
    loss_tokens: int  # positions whose shifted label is not -100

    def to(self, device: Any) -> Batch:
        """Move every tensor to `device` (non-blocking from pinned memory)."""
        mask = self.attention_mask
        return Batch(
            self.input_ids.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            self.position_ids.to(device, non_blocking=True),
            None if mask is None else mask.to(device, non_blocking=True),
            self.tokens,
            self.loss_tokens,
        )


def collate(
    examples: Sequence[Tokenized],
    micro: MicroBatch,
    pad_id: int,
    packing: bool,
    *,
    pin: bool = False,
    multiple: int = PAD_MULTIPLE,
) -> Batch:
    """Build the tensors of one micro-batch of rows, padded to a multiple of `multiple` tokens."""
    import numpy as np
    import torch

    rows = [[examples[index] for index in row] for row in micro]
    row_lengths = [sum(len(example) for example in row) for row in rows]
    width = -(-max(row_lengths) // multiple) * multiple
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for example in row:
            n = len(example)
            input_ids[r, at : at + n] = example.input_ids
            labels[r, at : at + n] = example.labels
            positions[r, at : at + n] = np.arange(n)
            at += n
        mask[r, :at] = 1
        positions[r, at:] = np.arange(width - at)  # padding forms its own "example", never attended to
    label_t = torch.from_numpy(labels)
    loss_tokens = int((label_t[:, 1:] != IGNORE_INDEX).sum())
    ids_t, pos_t = torch.from_numpy(input_ids), torch.from_numpy(positions)
    mask_t = None if packing else torch.from_numpy(mask)
    if pin:
        ids_t, label_t, pos_t = ids_t.pin_memory(), label_t.pin_memory(), pos_t.pin_memory()
        mask_t = mask_t.pin_memory() if mask_t is not None else None
    return Batch(ids_t, label_t, pos_t, mask_t, sum(row_lengths), loss_tokens)
