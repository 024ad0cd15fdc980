"""A run's inputs on one node: the dataset (validated), the eval set, the base model and the token
cache, prepared once by the node's first worker and handed to the others through a small JSON
file in the node's scratch folder (the others never download or tokenize anything themselves).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bigmodel_training.config import DatasetSource, TrainerConfig
from bigmodel_training.distributed import World

log = logging.getLogger(__name__)
HANDOFF = "inputs.json"


@dataclass
class NodeInputs:
    """Local paths (the same on every worker of a node) and digests of the run's inputs."""

    dataset_file: str
    dataset_sha256: str
    dataset_lines: int
    model_dir: str
    model_digest: str
    eval_file: str | None = None
    cache_dir: str | None = None

    def save(self, scratch: Path) -> None:
        """Write the handoff file atomically."""
        tmp = scratch / f".{HANDOFF}.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, scratch / HANDOFF)

    @classmethod
    def load(cls, scratch: Path) -> NodeInputs:
        """Read what the node's first worker prepared."""
        return cls(**json.loads((scratch / HANDOFF).read_text()))


def node_scratch(world: World, given: Path | None) -> Path:
    """The scratch folder: the given one, a fresh one for a single process, or one per node and
    torchrun run id (the same path on every worker of the node) for several processes."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        return given
    if not world.distributed:
        return Path(tempfile.mkdtemp(prefix="bigmodel-train-"))
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "") or os.environ.get("MASTER_PORT", "run")
    path = Path(tempfile.gettempdir()) / f"bigmodel-train-{''.join(c for c in run_id if c.isalnum() or c in '-_')}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def gather(config: TrainerConfig, scratch: Path) -> NodeInputs:
    """Resolve and check everything but the tokens, in the order that spends the least on bad input:
    the dataset's structure (streamed, nothing kept), the eval set, then the model download."""
    from bigmodel_training import data, sources
    from bigmodel_training.evaluate import load_eval_set
    from bigmodel_training.runner import file_digest, model_digest

    source = config.dataset
    dataset_file = sources.resolve_dataset_file(source, config.hf_token_env, scratch)
    validated = data.load_and_validate(
        dataset_file, source.format, source.min_examples,
        max_line_bytes=source.max_line_bytes, max_file_bytes=source.max_file_bytes, keep_examples=False,
    )  # fmt: skip
    log.info("dataset OK: %d examples in %d lines", validated.valid, validated.lines)
    eval_file = None
    evaluation = config.evaluation
    if evaluation.dataset_uri is not None:
        eval_source = DatasetSource(
            uri=evaluation.dataset_uri, format=source.format, local_path=evaluation.dataset_local_path
        )
        eval_file = sources.resolve_dataset_file(eval_source, config.hf_token_env, scratch / "eval")
        items = load_eval_set(eval_file, source.format, evaluation.max_examples, source.max_line_bytes)
        log.info("eval set OK: %d examples", len(items))
    model_dir = sources.resolve_model_dir(config.base_model, config.hf_token_env, scratch)
    return NodeInputs(
        dataset_file=str(dataset_file),
        dataset_sha256=file_digest(dataset_file),
        dataset_lines=validated.lines,
        model_dir=str(model_dir),
        model_digest=model_digest(model_dir),
        eval_file=str(eval_file) if eval_file else None,
    )


def build_cache(config: TrainerConfig, inputs: NodeInputs) -> str:
    """Tokenize the dataset into the token cache (or find it there); return its folder."""
    from bigmodel_training import tokencache

    source = config.dataset
    cache, _ = tokencache.build(
        Path(inputs.dataset_file), Path(inputs.model_dir), fmt=source.format, redact=config.privacy.redact_pii,
        dataset_sha256=inputs.dataset_sha256, workers=source.preprocessing_workers,
        max_line_bytes=source.max_line_bytes,
    )  # fmt: skip
    return str(cache.directory)
