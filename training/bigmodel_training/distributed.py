"""The processes of one run and how they talk: torch.distributed, set up from what torchrun gives.

torchrun (through `python -m bigmodel_training launch`, see launch.py) starts one worker per GPU
(or, on the CPU, one per pod) with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in the environment; a run started without them is a world of one and never touches
torch.distributed. Collectives use NCCL on CUDA and gloo on the CPU.

Who does what (docs/training.md, "Several GPUs and nodes"):
- global rank 0 owns the output: the run fingerprint, checkpoints, metrics.json, the adapter and
  every progress report;
- the first worker of each node (local rank 0) downloads the model and dataset and builds the token
  cache; the node's other workers wait for it and then read the same files;
- every rank takes part in every collective in the same order: the step's loss and stop flag are
  all-reduced, so all ranks agree on the step and stop after the same one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
_DEVICE: dict[str, Any] = {}  # "device": where collectives put their tensors (this worker's GPU, or the CPU)


class PeerFailedError(RuntimeError):
    """Another process of the run failed; its own error is the one to read."""


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Global rank 0: the one that writes."""
        return self.rank == 0

    @property
    def local_main(self) -> bool:
        """The first process on this node: the one that downloads and tokenizes."""
        return self.local_rank == 0

    @property
    def nodes(self) -> int:
        """Nodes (pods) in the run."""
        return max(1, self.size // max(1, self.local_size))

    def describe(self) -> str:
        """E.g. 'rank 3 of 8 (local 3 of 4)'."""
        return f"rank {self.rank} of {self.size} (local {self.local_rank} of {self.local_size})"


SINGLE = World()


def world_from_env(env: dict[str, str] | None = None) -> World:
    """The world torchrun describes in the environment; a world of one without it."""
    env = dict(os.environ) if env is None else env
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return SINGLE
    size = int(env["WORLD_SIZE"])
    return World(
        rank=int(env["RANK"]),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
        local_size=int(env.get("LOCAL_WORLD_SIZE", size)),
    )


def init(world: World, cuda: bool, timeout_s: float) -> None:
    """Join the process group (a no-op for a world of one); on CUDA, bind this worker to its GPU."""
    if not world.distributed:
        return
    import torch
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(world.local_rank)
    _DEVICE["device"] = torch.device("cuda", world.local_rank) if cuda else torch.device("cpu")
    if not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        log.info("%s joined the process group (%s)", world.describe(), backend)


def shutdown(world: World) -> None:
    """Leave the process group (at the end of a run, on every rank)."""
    if not world.distributed:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every rank."""
    if world.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_reduce(values: list[float], world: World, *, op: str = "sum", device: Any = None) -> list[float]:
    """Element-wise sum (or max) of `values` over every rank, as float64."""
    if not world.distributed:
        return list(values)
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device if device is not None else _DEVICE.get("device"))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return [float(x) for x in tensor.tolist()]


def broadcast_object(obj: T, world: World, src: int = 0) -> T:
    """`obj` as rank `src` has it, on every rank."""
    if not world.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if world.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def gather_object(obj: Any, world: World) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def scatter_object(objs: list[Any] | None, world: World) -> Any:
    """Rank i receives `objs[i]` from rank 0."""
    if not world.distributed:
        return objs[0] if objs else None
    import torch.distributed as dist

    out: list[Any] = [None]
    dist.scatter_object_list(out, objs if world.main else None, src=0)
    return out[0]


def on_main(fn: Callable[[], T], world: World) -> T:
    """Run `fn` on rank 0 only and give every rank its result; an exception on rank 0 is raised on
    every rank (same class and message), so all of them fail the same way instead of hanging."""
    if not world.distributed:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    if world.main:
        try:
            outcome = (True, fn())
        except Exception as exc:  # re-raised below, on every rank
            outcome = (False, _portable(exc))
    ok, value = broadcast_object(outcome, world)
    if not ok:
        raise value
    return value


def _portable(exc: Exception) -> Exception:
    """`exc` if it pickles, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - our own object, a round trip in memory
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def on_local_main(fn: Callable[[], T], world: World) -> T | None:
    """Run `fn` on each node's first worker while the others wait; returns its result there and
    None on the others. If it fails anywhere, every rank raises (the failed one its own error, the
    others PeerFailedError), so nobody waits in a later collective for a process that is gone."""
    result: T | None = None
    error: BaseException | None = None
    if world.local_main:
        try:
            result = fn()
        except Exception as exc:
            error = exc
    if not world.distributed:
        if error is not None:
            raise error
        return result
    (failed,) = all_reduce([1.0 if error is not None else 0.0], world, op="max")
    if error is not None:
        raise error
    if failed:
        raise PeerFailedError("another process of this run failed while preparing its inputs (see its error)")
    return result


@contextlib.contextmanager
def local_main_first(world: World) -> Iterator[None]:
    """The body runs on each node's first worker, then (after a barrier) on the others: downloads
    and caches are made once per node and found in place by the rest."""
    if not world.local_main:
        barrier(world)
    try:
        yield
    finally:
        if world.local_main:
            barrier(world)


def share(items: list[T], world: World) -> list[T | None]:
    """This rank's items (every size-th, from its rank), padded with None so that every rank gets
    the same count: ranks without a real item still take part in the collectives of a step."""
    slots = -(-len(items) // world.size)
    mine: list[T | None] = list(items[world.rank :: world.size])
    return mine + [None] * (slots - len(mine))
