"""The training loop: AdamW, linear warmup and decay, gradient accumulation, eval, checkpoints,
resume and progress reports. Deliberately small instead of HF `Trainer`, so that what a
checkpoint holds, how a resumed run finds its place in the data and what runs on the GPU are all
visible here.

A run is deterministic given the seed: the data order of each epoch is a function of (seed,
epoch), and the torch RNG (LoRA dropout) is saved in every checkpoint, so a run that is killed and
resumed takes the same steps with the same losses as one that never stopped.
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

from bigmodel_training.checkpoint import latest_checkpoint, load_checkpoint, remove_partial, save_checkpoint
from bigmodel_training.config import TrainerConfig
from bigmodel_training.data import PreparedData
from bigmodel_training.errors import TerminatedError
from bigmodel_training.loss import completion_loss
from bigmodel_training.modeling import Runtime, model_parts, parameter_counts, trainable_parameters
from bigmodel_training.packing import Batch, Step, collate, epoch_steps, eval_batches
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
        model: Any,
        data: PreparedData,
        config: TrainerConfig,
        runtime: Runtime,
        output_dir: Path,
        pad_id: int,
        reporter: ProgressReporter | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.model = model
        self.data = data
        self.config = config
        self.hp = config.hyperparameters
        self.runtime = runtime
        self.output_dir = output_dir
        self.pad_id = pad_id
        self.reporter = reporter or ProgressReporter(NullSink(), 0.0)
        self.on_step = on_step
        self.decoder, self.head, self.model_config = model_parts(model)
        self.params = list(trainable_parameters(model).values())
        self.lengths = [len(x) for x in data.train]
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
        self.tokens = 0  # real tokens trained on in this process
        self.train_time = 0.0  # seconds spent in optimizer steps in this process
        self.resumed_from: int | None = None
        self.last_checkpoint: str | None = None
        self.stop_requested = False

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
        return epoch_steps(
            self.lengths, seed=self.hp.seed, epoch=epoch, max_len=self.hp.max_seq_length,
            batch_size=self.hp.batch_size, accumulation=self.hp.gradient_accumulation_steps, packing=self.hp.packing,
        )  # fmt: skip

    def _collate(self, examples: list[Any], micro: list[list[int]]) -> Batch:
        pin = self.runtime.device.type == "cuda"
        return collate(examples, micro, self.pad_id, self.hp.packing, pin=pin).to(self.runtime.device)

    def loss_sum(self, batch: Batch) -> torch.Tensor:
        """Summed token cross-entropy of one micro-batch (forward pass under autocast)."""
        with self.runtime.autocast():
            # use_cache=False matters: with a cache, transformers skips the packed-sequence
            # detection and packed examples would attend to each other.
            out = self.decoder(
                input_ids=batch.input_ids,
                position_ids=batch.position_ids,
                attention_mask=batch.attention_mask,
                use_cache=False,
            )
            return completion_loss(out[0], batch.labels, self.head, self.model_config)

    def train_step(self, step: Step) -> tuple[float, int]:
        """One optimizer update over the step's micro-batches; returns (mean token loss, tokens)."""
        batches = [self._collate(self.data.train, micro) for micro in step]
        n_loss = max(1, sum(b.loss_tokens for b in batches))
        total = torch.zeros((), device=self.runtime.device)
        for batch in batches:
            loss = self.loss_sum(batch)
            (loss / n_loss).backward()
            total += loss.detach().float()
        if self.hp.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.hp.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(total.item()) / n_loss, sum(b.tokens for b in batches)

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Token-mean loss on the held-out examples (None without a validation split)."""
        if not self.data.eval:
            return None
        self.model.eval()
        total, count = 0.0, 0
        lengths = [len(x) for x in self.data.eval]
        for micro in eval_batches(
            lengths, max_len=self.hp.max_seq_length, batch_size=self.hp.batch_size, packing=self.hp.packing
        ):
            batch = self._collate(self.data.eval, micro)
            total += float(self.loss_sum(batch).item())
            count += batch.loss_tokens
        self.model.train()
        return total / max(1, count)

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "step": self.step, "epoch": epoch, "step_in_epoch": step_in_epoch,
            "history": self.history, "evals": self.evals, "total_steps": self.total_steps,
        }  # fmt: skip

    def checkpoint_uri(self, path: Path) -> str:
        """The URI under the output location of a checkpoint directory."""
        return f"{self.config.output.uri.rstrip('/')}/{path.parent.name}/{path.name}"

    def resume(self) -> tuple[int, int]:
        """Load the newest complete checkpoint, if any; return (epoch, step in epoch) to start at."""
        remove_partial(self.output_dir)
        path = latest_checkpoint(self.output_dir)
        if path is None:
            return 0, 0
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
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
        self.stop_requested = True

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
                    path = save_checkpoint(
                        self.output_dir, self.step, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, state=self._state(epoch, k + 1), keep=self.config.checkpoint.keep,
                    )  # fmt: skip
                    self.last_checkpoint = self.checkpoint_uri(path)
                self._report(epoch + (k + 1) / len(steps), force=last)
                if self.on_step is not None:
                    self.on_step(self.step)
                if self.stop_requested and not last:
                    raise TerminatedError(f"stopped by SIGTERM at step {self.step}; checkpoint {self.last_checkpoint}")

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
        """Real (non-padding) tokens per second of optimizer-step time in this process."""
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
            "resumed_from_step": self.resumed_from,
            "redactions": self.data.redactions,
        }


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
