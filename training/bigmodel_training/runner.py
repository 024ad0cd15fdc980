"""One fine-tuning run from a `TrainerConfig`, in the order that spends the least on bad input:

1. claim the output (a changed config fails at once), pick the device (QLoRA without CUDA stops);
2. resolve the dataset and validate its structure, streamed (no model yet), then the eval set and
   the base model (node_inputs.py, once per node);
3. redact and tokenize into the memory-mapped token cache with several workers, check lengths
   (tokencache.py, still before the model is loaded);
4. load the model (single, DDP or FSDP2: data_parallel.py), train (resuming from the newest
   complete checkpoint), save the result;
5. the eval gate (evaluate.py: base vs adapted held-out loss, optional scored eval set), then
   metrics.json, and the gate's verdict and the output URI into the FineTuneJob status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import ConfigError

log = logging.getLogger(__name__)
FINGERPRINT_FILE = "run-fingerprint.json"
SAMPLE_BYTES = 1 << 20


def fingerprint(config: TrainerConfig) -> str:
    """A digest of everything in the config that changes what is trained (not where progress goes)."""
    relevant = config.model_dump(
        mode="json", include={"base_model", "dataset", "method", "hyperparameters", "privacy"},
        exclude={"base_model": {"local_path"}, "dataset": {"local_path"}},
    )  # fmt: skip
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's content, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(SAMPLE_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(model_dir: Path) -> str:
    """What identifies the base model's content: every small file (config, tokenizer, weight
    index) in full, and for each weight file its name, size and three 1 MiB samples (start, middle,
    end). Reading hundreds of GB again at every start would cost minutes; a re-uploaded model of
    the same shapes differs in the sampled bytes. A hub snapshot's directory name (its commit) is
    part of the path, which is hashed too."""
    digest = hashlib.sha256(str(model_dir.resolve()).encode() if "snapshots" in model_dir.parts else b"")
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = path.stat().st_size
        digest.update(f"{path.relative_to(model_dir)}\0{size}\0".encode())
        with open(path, "rb") as handle:
            if size <= 4 * SAMPLE_BYTES:
                digest.update(handle.read())
                continue
            for offset in (0, size // 2, size - SAMPLE_BYTES):
                handle.seek(offset)
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def claim_output(output_dir: Path, identity: dict[str, str | None]) -> None:
    """Refuse to resume from checkpoints written for other data, another model or another config.

    `identity` holds the config fingerprint, the dataset's sha256 and the model's digest. A dataset
    overwritten at the same URI has a new sha256: resuming would continue at a position in a data
    order that no longer exists, so the run stops with a message saying what changed.
    """
    from bigmodel_training.checkpoint import complete_checkpoints

    marker = output_dir / FINGERPRINT_FILE
    previous: dict[str, Any] = json.loads(marker.read_text()) if marker.is_file() else {}
    changed = [key for key, value in identity.items() if key in previous and previous[key] != value]
    has_progress = bool(complete_checkpoints(output_dir)) or (output_dir / "metrics.json").is_file()
    if changed and (has_progress or "fingerprint" in changed):
        what = ", ".join(f"{_LABELS.get(key, key)} ({previous[key]} -> {identity[key]})" for key in changed)
        raise ConfigError(
            f"{output_dir} holds checkpoints or output of a different run: {what} changed since they were written; "
            "use a new output location or delete the old one"
        )
    marker.write_text(json.dumps({**previous, **identity}, sort_keys=True) + "\n")


_LABELS = {
    "fingerprint": "the training configuration",
    "dataset_sha256": "the dataset's content",
    "model_digest": "the base model (revision or files)",
}


def run(
    config: TrainerConfig, *, scratch: Path | None = None, on_step: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Train as configured; return the metrics (also written to <output>/metrics.json).

    Under torchrun every worker calls this: rank 0 owns the output and the reports, each node's
    first worker prepares the inputs (node_inputs.py), and all of them train (data_parallel.py).
    """
    from bigmodel_training import distributed

    world = distributed.world_from_env()
    if world.distributed:
        import torch

        distributed.init(world, torch.cuda.is_available(), config.distributed.timeout_s)
    metrics = _run(config, world, scratch, on_step)
    distributed.shutdown(world)
    return metrics


def _run(
    config: TrainerConfig, world: Any, scratch: Path | None, on_step: Callable[[int], None] | None
) -> dict[str, Any]:
    started = time.monotonic()
    from bigmodel_training import distributed, node_inputs, sources, tokencache
    from bigmodel_training.progress import NullSink, ProgressReporter, make_sink

    hp = config.hyperparameters
    scratch = node_inputs.node_scratch(world, scratch)
    output_dir = sources.resolve_output_dir(config.output) if world.main else Path(scratch / "not-rank-0")
    remote = sources.remote_output(config.output, output_dir) if world.main else None

    def claim_config() -> None:
        if remote is not None:
            remote.restore()  # the fingerprint and newest checkpoint of an earlier attempt
        claim_output(output_dir, {"fingerprint": fingerprint(config)})  # a changed config fails before any download

    distributed.on_main(claim_config, world)
    reporter = ProgressReporter(make_sink(config) if world.main else NullSink(), config.progress.interval_s)

    import torch

    from bigmodel_training import data, data_parallel, modeling
    from bigmodel_training.evaluate import load_eval_set
    from bigmodel_training.trainer import Trainer

    runtime = modeling.select_runtime(config.method)  # QLoRA without CUDA stops here, before any download
    strategy = data_parallel.resolve_strategy(config.distributed.strategy, config.method.type, world)

    def gather() -> node_inputs.NodeInputs:
        found = node_inputs.gather(config, scratch)
        found.save(scratch)
        return found

    inputs = distributed.on_local_main(gather, world) or node_inputs.NodeInputs.load(scratch)
    distributed.on_main(
        lambda: claim_output(
            output_dir,
            {"fingerprint": fingerprint(config), "dataset_sha256": inputs.dataset_sha256,
             "model_digest": inputs.model_digest, "processes": str(world.size)},
        ),
        world,
    )  # fmt: skip

    def tokenize() -> node_inputs.NodeInputs:
        inputs.cache_dir = node_inputs.build_cache(config, inputs)
        inputs.save(scratch)
        return inputs

    inputs = distributed.on_local_main(tokenize, world) or node_inputs.NodeInputs.load(scratch)
    assert inputs.cache_dir is not None
    cache = tokencache.TokenCache(Path(inputs.cache_dir))
    tokencache.check(cache, hp.max_seq_length, config.dataset.min_examples)
    train_idx, eval_idx = data.split_indices(len(cache), config.dataset.validation_split, hp.seed)
    redactions = cache.redactions
    prepared = data.PreparedData(cache.subset(train_idx), cache.subset(eval_idx), redactions, inputs.dataset_lines)
    evaluation = config.evaluation
    eval_items = (
        load_eval_set(
            Path(inputs.eval_file), config.dataset.format, evaluation.max_examples, config.dataset.max_line_bytes
        )
        if inputs.eval_file
        else []
    )
    tokenizer = modeling.load_tokenizer(inputs.model_dir)
    log.info(
        "%d train / %d eval examples, redactions %s, %s, %s, %s",
        len(train_idx), len(eval_idx), redactions, runtime.describe(), strategy, world.describe(),
    )  # fmt: skip

    torch.manual_seed(hp.seed)
    if runtime.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    lengths = prepared.train.lengths
    probe = prepared.train[int(lengths.argmin())]  # the model's own loss must equal ours on it (check_objective)
    if strategy == data_parallel.FSDP:
        parallel = data_parallel.load_sharded(inputs.model_dir, config.method, hp, runtime, world, probe=probe)
    else:
        model = modeling.load_model(inputs.model_dir, config.method, hp, runtime, probe=probe)
        parallel = data_parallel.wrap(model, strategy, world, runtime)
    step_hook = on_step
    if remote is not None:

        def step_hook(step: int) -> None:
            remote.sync_checkpoints()  # each checkpoint reaches the bucket before training goes on
            if on_step is not None:
                on_step(step)

    trainer = Trainer(
        parallel=parallel, data=prepared, config=config, runtime=runtime, output_dir=output_dir,
        pad_id=int(tokenizer.pad_token_id), reporter=reporter, on_step=step_hook,
    )  # fmt: skip
    reporter.report(step=trainer.step, total_steps=trainer.total_steps, epoch=0.0, redactions=redactions, force=True)
    metrics = trainer.train()

    full_state = parallel.full_state_for_output()  # fsdp: gathered on rank 0 (every rank takes part)
    distributed.on_main(lambda: _save_output(parallel.model, tokenizer, output_dir, config, full_state), world)
    from bigmodel_training.evaluate import evaluate

    with parallel.gathered():  # every rank evaluates (fsdp: in lockstep); rank 0 reports
        gate = evaluate(trainer, tokenizer, eval_items, config.evaluation, config.method.type)
    metrics["evaluation"] = gate.to_status()
    metrics["wall_time_s"] = round(time.monotonic() - started, 3)
    metrics["output_uri"] = config.output.uri

    def finish() -> None:
        _write_json_atomic(output_dir / "metrics.json", metrics)
        if remote is not None:
            remote.finish()  # the adapter, then metrics.json, in the bucket before the status names it
        reporter.report_evaluation(gate.to_status())
        trainer.report_done(config.output.uri)

    distributed.on_main(finish, world)
    log.info(
        "done: %d steps, loss %s, eval loss %s -> %s",
        metrics["steps"],
        metrics["final_loss"],
        metrics["eval_loss"],
        config.output.uri,
    )
    return metrics


def _save_output(
    model: Any, tokenizer: Any, output_dir: Path, config: TrainerConfig, state: dict[str, Any] | None = None
) -> None:
    """Save into a staging folder, then move each file into place (a reader never sees half a file).
    `state`: the gathered state dict of a sharded model."""
    from bigmodel_training.modeling import save_final

    staging = output_dir / ".final-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_final(model, tokenizer, staging, config.method, config.base_model.uri, state_dict=state)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    shutil.rmtree(staging, ignore_errors=True)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
