"""One fine-tuning run from a `TrainerConfig`, in the order that spends the least on bad input:

1. resolve the output and dataset locations, validate the dataset's structure (no model yet);
2. pick the device (QLoRA without CUDA stops here), resolve the base model, load the tokenizer;
3. redact, tokenize, check lengths (still before the model is loaded);
4. load the model, train (resuming from the newest complete checkpoint), save the result;
5. the eval gate (evaluate.py: base vs adapted held-out loss, optional scored eval set), then
   metrics.json, and the gate's verdict and the output URI into the FineTuneJob status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
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
    """Train as configured; return the metrics (also written to <output>/metrics.json)."""
    started = time.monotonic()
    from bigmodel_training import data, sources
    from bigmodel_training.progress import ProgressReporter, make_sink

    hp = config.hyperparameters
    scratch = scratch or Path(tempfile.mkdtemp(prefix="bigmodel-train-"))
    output_dir = sources.resolve_output_dir(config.output)
    remote = sources.remote_output(config.output, output_dir)
    if remote is not None:
        remote.restore()  # the fingerprint and newest checkpoint of an earlier attempt
    claim_output(output_dir, {"fingerprint": fingerprint(config)})  # a changed config fails before any download
    reporter = ProgressReporter(make_sink(config), config.progress.interval_s)

    dataset_file = sources.resolve_dataset_file(config.dataset, config.hf_token_env, scratch)
    source = config.dataset
    validated = data.load_and_validate(
        dataset_file, source.format, source.min_examples,
        max_line_bytes=source.max_line_bytes, max_file_bytes=source.max_file_bytes,
    )  # fmt: skip
    log.info("dataset OK: %d examples", len(validated.examples))
    eval_items = _load_eval_set(config, scratch)  # a broken eval set fails now, not after training

    import torch

    from bigmodel_training import modeling
    from bigmodel_training.trainer import Trainer

    runtime = modeling.select_runtime(config.method)
    model_dir = sources.resolve_model_dir(config.base_model, config.hf_token_env, scratch)
    claim_output(
        output_dir,
        {"fingerprint": fingerprint(config), "dataset_sha256": file_digest(dataset_file),
         "model_digest": model_digest(model_dir)},
    )  # fmt: skip
    tokenizer = modeling.load_tokenizer(model_dir)
    redactions = data.redact_examples(validated.examples) if config.privacy.redact_pii else {}
    tokenized = data.tokenize_checked(validated.examples, tokenizer, hp.max_seq_length, validated.lines)
    train, held_out = data.split(tokenized, config.dataset.validation_split, hp.seed)
    prepared = data.PreparedData(train, held_out, redactions, validated.lines)
    log.info(
        "%d train / %d eval examples, redactions %s, %s", len(train), len(held_out), redactions, runtime.describe()
    )

    torch.manual_seed(hp.seed)
    if runtime.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    probe = min(train, key=len)  # the model's own loss must equal ours on it (modeling.check_objective)
    model = modeling.load_model(model_dir, config.method, hp, runtime, probe=probe)
    step_hook = on_step
    if remote is not None:

        def step_hook(step: int) -> None:
            remote.sync_checkpoints()  # each checkpoint reaches the bucket before training goes on
            if on_step is not None:
                on_step(step)

    trainer = Trainer(
        model=model, data=prepared, config=config, runtime=runtime, output_dir=output_dir,
        pad_id=int(tokenizer.pad_token_id), reporter=reporter, on_step=step_hook,
    )  # fmt: skip
    reporter.report(step=trainer.step, total_steps=trainer.total_steps, epoch=0.0, redactions=redactions, force=True)
    metrics = trainer.train()

    _save_output(model, tokenizer, output_dir, config)
    from bigmodel_training.evaluate import evaluate

    gate = evaluate(trainer, tokenizer, eval_items, config.evaluation, config.method.type)
    metrics["evaluation"] = gate.to_status()
    metrics["wall_time_s"] = round(time.monotonic() - started, 3)
    metrics["output_uri"] = config.output.uri
    _write_json_atomic(output_dir / "metrics.json", metrics)
    if remote is not None:
        remote.finish()  # the adapter, then metrics.json, in the bucket before the status names it
    reporter.report_evaluation(gate.to_status())
    trainer.report_done(config.output.uri)
    log.info(
        "done: %d steps, loss %s, eval loss %s -> %s",
        metrics["steps"],
        metrics["final_loss"],
        metrics["eval_loss"],
        config.output.uri,
    )
    return metrics


def _load_eval_set(config: TrainerConfig, scratch: Path) -> list[Any]:
    """The eval set's items (empty without one), parsed before any model is loaded."""
    from bigmodel_training import sources
    from bigmodel_training.config import DatasetSource
    from bigmodel_training.evaluate import load_eval_set

    evaluation = config.evaluation
    if evaluation.dataset_uri is None:
        return []
    source = DatasetSource(
        uri=evaluation.dataset_uri, format=config.dataset.format, local_path=evaluation.dataset_local_path
    )
    path = sources.resolve_dataset_file(source, config.hf_token_env, scratch / "eval")
    items = load_eval_set(path, config.dataset.format, evaluation.max_examples, config.dataset.max_line_bytes)
    log.info("eval set OK: %d examples", len(items))
    return items


def _save_output(model: Any, tokenizer: Any, output_dir: Path, config: TrainerConfig) -> None:
    """Save into a staging folder, then move each file into place (a reader never sees half a file)."""
    from bigmodel_training.modeling import save_final

    staging = output_dir / ".final-tmp"
    shutil.rmtree(staging, ignore_errors=True)
    save_final(model, tokenizer, staging, config.method, config.base_model.uri)
    for item in staging.iterdir():
        os.replace(item, output_dir / item.name)
    shutil.rmtree(staging, ignore_errors=True)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)
