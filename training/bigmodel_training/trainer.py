"""The training loop: AdamW, linear warmup and decay, gradient accumulation, eval, checkpoints,
resume and progress reports. Deliberately small instead of HF `Trainer`, so that what a
checkpoint holds, how a resumed run finds its place in the data and what runs on the GPU are all
visible here.

A run is deterministic given the seed: the data order of each epoch is a function of (seed,
epoch), and the torch RNG (LoRA dropout) is saved in every checkpoint, so a run that is killed and
resumed takes the same steps with the same losses as one that never stopped.

With several processes (data_parallel.py) one optimizer step is the same set of micro-batches as
one process with `gradient_accumulation_steps` × processes: the step's micro-batches are dealt
out to the ranks (rank r takes every size-th, from r), each rank scales its summed loss by
processes / (loss tokens of the whole step), and DDP's or FSDP's gradient average then gives the
exact token mean of one process. A rank left without a micro-batch (the last, short step of an
epoch) runs one with weight 0, so that every rank takes part in the same collectives. The summed
loss, the token count and the stop flag (SIGTERM) are all-reduced once per step: every rank logs
the same loss, stops after the same step and writes (through rank 0) the same checkpoint.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bigmodel_training import distributed as dist
from bigmodel_training.checkpoint import (
    Checkpoint,
    latest_checkpoint,
    read_checkpoint,
    remove_partial,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bigmodel_training.config import TrainerConfig
from bigmodel_training.data import PreparedData, lengths_of, loss_counts_of
from bigmodel_training.data_parallel import Parallel, wrap
from bigmodel_training.distributed import SINGLE, World
from bigmodel_training.errors import NonFiniteLossError, TerminatedError
from bigmodel_training.modeling import Runtime, parameter_counts, trainable_parameters
from bigmodel_training.packing import Batch, MicroBatch, Step, collate, epoch_steps, eval_batches
from bigmodel_training.progress import NullSink, ProgressReporter

log = logging.getLogger(__name__)
LOSS_WINDOW = 10  # steps averaged into the reported training loss


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1 over `warmup_steps`, then linear decay towards 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class Trainer:
    """Trains `model` on prepared data; `train()` returns the metrics written to metrics.json."""

    def __init__(
        self,
        *,
        model: Any = None,
        data: PreparedData,
        config: TrainerConfig,
        runtime: Runtime,
        output_dir: Path,
        pad_id: int,
        reporter: ProgressReporter | None = None,
        on_step: Callable[[int], None] | None = None,
        parallel: Parallel | None = None,
    ) -> None:
        self.parallel = parallel or wrap(model, "single", SINGLE, runtime)
        self.world: World = self.parallel.world
        self.model = self.parallel.model
        self.data = data
        self.config = config
        self.hp = config.hyperparameters
        self.runtime = runtime
        self.output_dir = output_dir
        self.pad_id = pad_id
        self.reporter = reporter or ProgressReporter(NullSink(), 0.0)
        self.on_step = on_step
        self.params = list(trainable_parameters(self.model).values())
        self.lengths = lengths_of(data.train)
        self.loss_counts = loss_counts_of(data.train)
        self.plan = self._plan()
        self.total_steps = sum(n for _, n in self.plan)
        warmup = math.ceil(self.hp.warmup_ratio * self.total_steps)
        fused = runtime.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.params, lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay, fused=fused
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, linear_schedule(self.total_steps, warmup))
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, float]] = []
        self.tokens = 0  # real tokens trained on by all processes since this process started
        self.train_time = 0.0  # seconds spent in optimizer steps in this process
        self.resumed_from: int | None = None
        self.last_checkpoint: str | None = None
        self.stop_requested = False  # agreed by every rank (all-reduced with the step)
        self.signalled = False  # this process received SIGTERM

    def _plan(self) -> list[tuple[int, int]]:
        """(epoch, steps to take in it) until `epochs` are done or `max_steps` is reached."""
        plan, done, epoch = [], 0, 0
        limit = self.hp.max_steps
        while True:
            n = len(self._steps(epoch))
            if n == 0:
                raise ValueError("no training data")
            if limit is not None:
                n = min(n, limit - done)
            plan.append((epoch, n))
            done += n
            epoch += 1
            if (limit is None and epoch >= self.hp.epochs) or (limit is not None and done >= limit):
                return plan

    def _steps(self, epoch: int) -> list[Step]:
        """The global steps of an epoch: each holds accumulation × processes micro-batches."""
        return epoch_steps(
            self.lengths, seed=self.hp.seed, epoch=epoch, max_len=self.hp.max_seq_length,
            batch_size=self.hp.batch_size, accumulation=self.hp.gradient_accumulation_steps * self.world.size,
            packing=self.hp.packing,
        )  # fmt: skip

    def _collate(self, examples: Any, micro: MicroBatch) -> Batch:
        pin = self.runtime.device.type == "cuda"
        return collate(examples, micro, self.pad_id, self.hp.packing, pin=pin).to(self.runtime.device)

    def loss_sum(self, batch: Batch) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch (forward pass under autocast)."""
        return self.parallel.loss_sum(batch, self.runtime)

    def _step_loss_tokens(self, step: Step) -> int:
        """Loss tokens of the whole global step (every rank computes it from the plan, no collective)."""
        return int(sum(self.loss_counts[i] for micro in step for row in micro for i in row))

    def train_step(self, step: Step) -> tuple[float, int]:
        """One optimizer update over the step's micro-batches (this rank's share of them); returns
        the (mean token loss, real tokens) of the whole step, the same on every rank."""
        share = dist.share(step, self.world)
        n_loss = max(1, self._step_loss_tokens(step))
        scale = self.world.size / n_loss  # DDP and FSDP average the gradients over the ranks
        total = torch.zeros((), dtype=torch.float64, device=self.runtime.device)
        tokens = 0
        for k, micro in enumerate(share):
            batch = self._collate(self.data.train, micro if micro is not None else step[0][:1])
            weight = 1.0 if micro is not None else 0.0
            with self.parallel.sync(last=k == len(share) - 1):
                loss = self.loss_sum(batch)
                (loss * (scale * weight)).backward()
            total += loss.detach().double() * weight
            tokens += batch.tokens if micro is not None else 0
        summed, tokens_all, stop = dist.all_reduce(
            [float(total.item()), float(tokens), float(self.signalled)], self.world, device=self.runtime.device
        )
        mean = summed / n_loss
        if not math.isfinite(mean):
            raise NonFiniteLossError(self._diverged(f"the training loss is {mean}"))
        if self.hp.max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm)
            norm_value = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            if not math.isfinite(norm_value):
                raise NonFiniteLossError(self._diverged(f"the gradient norm is {norm_value} (loss {mean:.4f})"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.stop_requested = stop > 0
        return mean, int(tokens_all)

    def _diverged(self, what: str) -> str:
        """The message of a NaN/inf stop: where, and what to change."""
        kept = f"; the last checkpoint ({self.last_checkpoint}) is kept" if self.last_checkpoint else ""
        return (
            f"training diverged at step {self.step + 1}: {what}{kept}. Lower hyperparameters.learningRate, keep "
            "maxGradNorm set, or check the data for extreme examples; the weights of this step were not applied"
        )

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-mean loss on the held-out examples (None without a validation split); the
        micro-batches are dealt out to the ranks like a training step's."""
        if not len(self.data.eval):
            return None
        self.model.eval()
        lengths = lengths_of(self.data.eval)
        micros = eval_batches(
            lengths, max_len=self.hp.max_seq_length, batch_size=self.hp.batch_size, packing=self.hp.packing
        )
        total, count = 0.0, 0
        for micro in dist.share(micros, self.world):
            batch = self._collate(self.data.eval, micro if micro is not None else micros[0][:1])
            loss = float(self.loss_sum(batch).item())
            if micro is not None:
                total, count = total + loss, count + batch.loss_tokens
        total, count_all = dist.all_reduce([total, float(count)], self.world, device=self.runtime.device)
        self.model.train()
        return total / max(1.0, count_all)

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "history": self.history, "evals": self.evals, "total_steps": self.total_steps,
            "processes": self.world.size,
        }  # fmt: skip

    def checkpoint_uri(self, path: Path) -> str:
        """The URI under the output location of a checkpoint directory."""
        return f"{self.config.output.uri.rstrip('/')}/{path.parent.name}/{path.name}"

    def resume(self) -> tuple[int, int]:
        """Load the newest complete checkpoint, if any; return (epoch, step in epoch) to start at.
        Rank 0 reads it and the other ranks receive what they need from it."""

        def find() -> Path | None:
            remove_partial(self.output_dir)
            return latest_checkpoint(self.output_dir)

        path = dist.on_main(find, self.world)
        if path is None:
            return 0, 0
        saved: Checkpoint | None = None

        def read() -> bool:
            nonlocal saved
            saved = read_checkpoint(path)
            return saved.legacy_optimizer

        legacy = dist.on_main(read, self.world)
        if legacy and saved is not None:  # written by a one-process trainer before format 2
            if self.world.distributed:
                raise ValueError(f"checkpoint {path} predates multi-process training; resume it with one process")
            for name, param in trainable_parameters(self.model).items():
                with torch.no_grad():
                    param.copy_(saved.tensors[name].to(param.device, param.dtype))
            self.optimizer.load_state_dict(saved.optimizer_state)
        # Rank 0's copy goes to every rank (trainable state only: a LoRA checkpoint is a few MB); each
        # rank then loads the full tensors into its own (whole or sharded) parameters.
        saved = dist.broadcast_object(saved, self.world)
        assert saved is not None
        if not legacy:
            self.parallel.load_checkpoint_state(saved.tensors, saved.optimizer_state, self.optimizer)
        scheduler_state, state, rngs = saved.scheduler_state, saved.state, saved.rng
        self.scheduler.load_state_dict(scheduler_state)
        if len(rngs) == self.world.size:
            set_rng_state(rngs[self.world.rank])
        else:  # another number of processes wrote it: the dropout masks cannot continue exactly
            log.warning("checkpoint written by %d process(es), resumed by %d: RNG reseeded", len(rngs), self.world.size)
            torch.manual_seed(self.hp.seed + 7919 * self.world.rank + int(state["step"]))
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))
        self.resumed_from = self.step
        self.last_checkpoint = self.checkpoint_uri(path)
        log.info("resumed from %s at step %d", path, self.step)
        return int(state["epoch"]), int(state["step_in_epoch"])

    def train(self) -> dict[str, Any]:
        """Run (or resume) training; returns the metrics (without writing them)."""
        start_epoch, start_k = self.resume()
        self.model.train()
        handle_sigterm = _main_thread()
        previous = signal.getsignal(signal.SIGTERM) if handle_sigterm else None
        if handle_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self._loop(start_epoch, start_k)
        finally:
            if handle_sigterm:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        return self.metrics()

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: stopping after this step with a checkpoint")
        self.signalled = True

    def _loop(self, start_epoch: int, start_k: int) -> None:
        every = self.config.checkpoint.every_steps
        eval_every = self.hp.eval_every_steps or every
        for epoch, n_steps in self.plan:
            if epoch < start_epoch:
                continue
            steps = self._steps(epoch)
            for k in range(start_k if epoch == start_epoch else 0, n_steps):
                started = time.perf_counter()
                loss, tokens = self.train_step(steps[k])
                self.train_time += time.perf_counter() - started
                self.tokens += tokens
                self.step += 1
                lr = float(self.scheduler.get_last_lr()[0])
                self.history.append(
                    {
                        "step": self.step,
                        "loss": round(loss, 6),
                        "lr": lr,
                        "epoch": round(epoch + (k + 1) / len(steps), 4),
                    }
                )
                last = self.step == self.total_steps
                if self.step % eval_every == 0 or last:
                    eval_loss = self.evaluate()
                    if eval_loss is not None:
                        self.evals.append({"step": self.step, "eval_loss": round(eval_loss, 6)})
                if self.step % every == 0 or last or self.stop_requested:
                    self.save(epoch, k + 1)
                self._report(epoch + (k + 1) / len(steps), force=last)
                if self.on_step is not None:
                    self.on_step(self.step)
                if self.stop_requested and not last:
                    raise TerminatedError(f"stopped by SIGTERM at step {self.step}; checkpoint {self.last_checkpoint}")

    def save(self, epoch: int, step_in_epoch: int) -> None:
        """A checkpoint of the current step: every rank takes part in gathering the state, rank 0
        writes it; every rank then knows its URI."""
        tensors, optimizer_state = self.parallel.state_for_checkpoint(self.optimizer)
        rngs = dist.gather_object(rng_state(), self.world)

        def write() -> str:
            path = save_checkpoint(
                self.output_dir, self.step, tensors=tensors, optimizer_state=optimizer_state,
                scheduler_state=self.scheduler.state_dict(), rng=rngs or [], state=self._state(epoch, step_in_epoch),
                keep=self.config.checkpoint.keep,
            )  # fmt: skip
            return self.checkpoint_uri(path)

        self.last_checkpoint = dist.on_main(write, self.world)

    def _report(self, epoch: float, *, force: bool = False, adapter_uri: str | None = None) -> None:
        recent = [h["loss"] for h in self.history[-LOSS_WINDOW:]]
        steps_here = self.step - (self.resumed_from or 0)
        eta = (self.total_steps - self.step) * self.train_time / steps_here if steps_here else None
        self.reporter.report(
            step=self.step, total_steps=self.total_steps, epoch=epoch,
            loss=sum(recent) / len(recent) if recent else None,
            eval_loss=self.evals[-1]["eval_loss"] if self.evals else None,
            eta_seconds=eta, tokens_per_second=self.tokens_per_second(),
            checkpoint=self.last_checkpoint, adapter_uri=adapter_uri, redactions=self.data.redactions, force=force,
        )  # fmt: skip

    def report_done(self, adapter_uri: str) -> None:
        """The final report, naming the output."""
        epoch = self.history[-1]["epoch"] if self.history else 0.0
        self._report(epoch, force=True, adapter_uri=adapter_uri)

    def tokens_per_second(self) -> float | None:
        """Real (non-padding) tokens per second of optimizer-step time, all processes together."""
        return self.tokens / self.train_time if self.train_time > 0 else None

    def metrics(self) -> dict[str, Any]:
        """Everything metrics.json records about the training itself."""
        trainable, total = parameter_counts(self.model)
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.runtime.device.type == "cuda" else None
        return {
            "method": self.config.method.type,
            "steps": self.step,
            "total_steps": self.total_steps,
            "epochs": self.history[-1]["epoch"] if self.history else 0.0,
            "train_examples": len(self.data.train),
            "eval_examples": len(self.data.eval),
            "loss_curve": self.history,
            "eval_loss_curve": self.evals,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "eval_loss": self.evals[-1]["eval_loss"] if self.evals else None,
            "tokens_per_second": self.tokens_per_second(),
            "train_tokens": self.tokens,
            "train_time_s": round(self.train_time, 3),
            "trainable_parameters": trainable,
            "total_parameters": total,
            "peak_memory_gib": None if peak is None else round(peak, 3),
            "device": self.runtime.describe(),
            "processes": self.world.size,
            "strategy": self.parallel.strategy,
            "resumed_from_step": self.resumed_from,
            "redactions": self.data.redactions,
        }


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
