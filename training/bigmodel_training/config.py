"""The trainer's configuration: the contract between the operator and the training Job.

The operator renders a `TrainerConfig` into a ConfigMap and mounts it into the training pod; the
trainer reads it with `python -m bigmodel_training --config FILE` (JSON or YAML). Fields are
snake_case and unknown fields are refused, so a typo in the operator's renderer fails loudly in the
contract test instead of being silently ignored by the trainer.

This module imports only pydantic (and PyYAML when a YAML file is loaded), so the operator can
import it without torch.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bigmodel_contract.safe_paths import check_path, check_uri

# Where the operator mounts pvc:// volumes when it does not say otherwise: pvc://claim/a/b is
# found at <MOUNT_ROOT>/claim/a/b. The operator normally sets `local_path` explicitly.
DEFAULT_MOUNT_ROOT = "/mnt/bigmodel"
URI_SCHEMES = ("hf://", "s3://", "gs://", "pvc://", "file://", "http://", "https://")
ALL_LINEAR = "all-linear"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def _check_uri(uri: str, local_path: str | None = None) -> str:
    """A known scheme; no hidden characters or `..` segment in the URI or in where it is mounted
    (bigmodel_contract: the rule the operator applied at admission, repeated where files are opened)."""
    check_uri(uri)
    if local_path is not None:
        check_path(local_path)
    if not uri.startswith(URI_SCHEMES):
        raise ValueError(f"unsupported URI {uri!r}: expected one of {', '.join(URI_SCHEMES)}")
    if uri.startswith("file://") and not uri.startswith("file:///"):
        raise ValueError(f"file URIs must be absolute (file:///path), got {uri!r}")
    return uri


class JobRef(_Model):
    """The FineTuneJob this run belongs to; used to report progress into its status."""

    name: str = Field(min_length=1, max_length=253)
    namespace: str = Field(min_length=1, max_length=63)


class BaseModelSource(_Model):
    """The pretrained model to adapt."""

    uri: str = Field(description="hf://org/name, pvc://claim/path, file:///abs/path, s3://, gs://")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) for hf://.")
    local_path: str | None = Field(
        default=None, description="Where the operator mounted the model; wins over resolving `uri`."
    )

    @model_validator(mode="after")
    def _uri(self) -> BaseModelSource:
        _check_uri(self.uri, self.local_path)
        return self


class FeedbackFilter(_Model):
    """Build the dataset from a BigModel's feedback sink (`uri` is the sink: a directory of JSONL files)."""

    min_rating: int = Field(default=1, ge=1, le=5, description="Keep records rated at least this (1..5).")
    since: datetime | None = Field(default=None, description="Keep records given at or after this time.")
    until: datetime | None = Field(
        default=None,
        description="The snapshot's end: records given after it are not read (the FineTuneJob's creation time), "
        "so a retried or resumed run trains on exactly the same rows.",
    )


class DatasetSource(_Model):
    """Training data: one JSON object per line (JSONL)."""

    uri: str = Field(description="pvc://, file:///, hf://datasets/org/name/file.jsonl, http(s)://, s3://, gs://")
    format: Literal["chat", "instruction", "completion"] = "chat"
    validation_split: float = Field(default=0.0, ge=0.0, le=0.5, description="Fraction held out for eval loss.")
    min_examples: int = Field(default=10, ge=1, description="Fewer valid examples than this is a defect.")
    local_path: str | None = Field(default=None, description="Where the operator mounted the file.")
    max_line_bytes: int = Field(
        default=16 * 2**20, ge=1024, description="Longer lines are reported (line_too_large) and never read whole."
    )
    max_file_bytes: int = Field(
        default=4 * 2**30, ge=1024, description="Larger files are refused before parsing (file_too_large)."
    )
    feedback: FeedbackFilter | None = Field(
        default=None, description="Set: `uri`/`local_path` is a feedback sink directory, read as chat records."
    )

    @model_validator(mode="after")
    def _uri(self) -> DatasetSource:
        _check_uri(self.uri, self.local_path)
        if self.feedback is not None and self.format != "chat":
            raise ValueError("dataset.feedback records are chat conversations: format must be chat")
        return self


class MethodConfig(_Model):
    """How the model is adapted: LoRA, QLoRA (4-bit base, GPU only) or full fine-tuning."""

    type: Literal["lora", "qlora", "full"] = "lora"
    rank: int = Field(default=16, ge=1, le=1024)
    alpha: float | None = Field(default=None, gt=0, description="LoRA alpha; default 2 × rank.")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: [ALL_LINEAR],
        min_length=1,
        description='Module names LoRA adapts; ["all-linear"] means every linear layer but the output head.',
    )

    @property
    def lora_alpha(self) -> float:
        """The effective alpha (2 × rank unless set)."""
        return self.alpha if self.alpha is not None else 2.0 * self.rank


class Hyperparameters(_Model):
    """Optimisation settings. A step is one optimizer update of batch_size × accumulation sequences."""

    epochs: int = Field(default=1, ge=1, le=1000)
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps.")
    learning_rate: float = Field(default=2e-4, gt=0, lt=1)
    batch_size: int = Field(default=8, ge=1, description="Sequences (packed rows when packing) per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_seq_length: int = Field(default=2048, ge=16, description="Longer examples are refused, never cut.")
    packing: bool = Field(default=True, description="Pack several short examples into one sequence.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    warmup_ratio: float = Field(default=0.03, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float | None = Field(default=1.0, gt=0, description="Gradient clipping; null disables.")
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations: less memory, ~30% slower. Default: on only when a micro-batch's "
        "activations would not fit in the GPU memory left after loading the model (never on the CPU).",
    )
    attention: Literal["auto", "sdpa", "flex_attention", "eager"] = Field(
        default="auto",
        description="Attention kernel; auto: flex_attention on CUDA GPUs, sdpa on the CPU. Packed examples get a "
        "block-diagonal causal mask either way.",
    )
    torch_compile: bool | None = Field(
        default=None, description="Compile each decoder layer with torch.compile; default: on CUDA GPUs only."
    )
    eval_every_steps: int | None = Field(
        default=None, ge=1, description="Eval loss every N steps (default: at every checkpoint and at the end)."
    )


class OutputTarget(_Model):
    """Where the adapter or model, metrics.json and the checkpoints are written."""

    uri: str = Field(description="pvc://claim/path or file:///abs/path (s3:// and gs:// need a staging mount).")
    local_path: str | None = Field(default=None, description="Where the operator mounted the output location.")

    @model_validator(mode="after")
    def _uri(self) -> OutputTarget:
        _check_uri(self.uri, self.local_path)
        return self


class CheckpointConfig(_Model):
    """Resumable checkpoints under <output>/checkpoints/step-NNNNNNNN."""

    every_steps: int = Field(default=100, ge=1)
    keep: int = Field(default=2, ge=1, description="Complete checkpoints kept; older ones are deleted.")


class PrivacyConfig(_Model):
    """PII redaction of the training text before tokenization."""

    redact_pii: bool = False


class ProgressConfig(_Model):
    """Where progress goes: the FineTuneJob status (kube), a JSON file, or nowhere."""

    sink: Literal["kube", "file", "none"] = "none"
    file_path: str | None = Field(default=None, description="For sink=file: the JSON file rewritten on each report.")
    interval_s: float = Field(default=30.0, ge=0.0, description="At most one report per interval (and one at the end).")

    @model_validator(mode="after")
    def _file(self) -> ProgressConfig:
        if self.sink == "file" and not self.file_path:
            raise ValueError("progress.sink=file needs progress.file_path")
        return self


class GateConfig(_Model):
    """Thresholds of the eval gate; the trainer decides `passed` and says why."""

    max_loss_ratio: float = Field(
        default=1.0, gt=0, description="Largest adapted / base held-out loss that passes (1.0: no worse)."
    )
    min_score: float | None = Field(
        default=None, ge=0, le=1, description="Smallest eval-set score (share passed) of the adapted model."
    )
    require_held_out: bool = Field(
        default=True,
        description="Without held-out data (no validation split, no eval set) the gate does not pass: nothing was "
        "compared. false: pass anyway (the adapter is then judged by the canary alone).",
    )


class IncumbentAdapter(_Model):
    """The version this run's adapter would replace (the stable adapter of its BigModel), compared on the same
    held-out examples and eval set; none: the base model is the incumbent."""

    name: str = Field(min_length=1, description="Its engine name, e.g. support-bot.ftj-v1 (for the status).")
    uri: str = Field(description="Where its adapter files are: pvc://, file:/// or s3://.")
    local_path: str | None = Field(default=None, description="Where the operator mounted it.")

    @model_validator(mode="after")
    def _uri(self) -> IncumbentAdapter:
        _check_uri(self.uri)
        return self


class EvaluationConfig(_Model):
    """After training: held-out loss of the base and the adapted model, and an optional scored eval set."""

    dataset_uri: str | None = Field(
        default=None, description='Eval set (JSONL): {"prompt", "reference"} or {"messages": [...]}.'
    )
    dataset_local_path: str | None = Field(default=None, description="Where the operator mounted the eval set.")
    scorer: Literal["exact", "contains", "json", "regex"] = "exact"
    pattern: str | None = Field(default=None, description="Regular expression for scorer regex (else the reference).")
    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    max_examples: int = Field(default=200, ge=1, le=10_000)
    gate: GateConfig = Field(default_factory=GateConfig)
    incumbent: IncumbentAdapter | None = Field(default=None, description="The adapter version it would replace.")

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationConfig:
        if self.dataset_uri is not None:
            _check_uri(self.dataset_uri, self.dataset_local_path)
        if self.pattern is not None:
            import re

            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"evaluation.pattern is not a valid regular expression: {exc}") from exc
        if self.gate.min_score is not None and self.dataset_uri is None:
            raise ValueError("evaluation.gate.min_score needs evaluation.dataset_uri (an eval set to score)")
        return self


class TrainerConfig(_Model):
    """Everything one fine-tuning run needs. Rendered by the operator, parsed by the trainer."""

    job: JobRef | None = None
    base_model: BaseModelSource
    dataset: DatasetSource
    method: MethodConfig = Field(default_factory=MethodConfig)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    output: OutputTarget
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    progress: ProgressConfig = Field(default_factory=ProgressConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    hf_token_env: str | None = Field(
        default="HF_TOKEN", description="Name of the environment variable that holds the Hugging Face token."
    )

    @model_validator(mode="after")
    def _consistent(self) -> TrainerConfig:
        if self.progress.sink == "kube" and self.job is None:
            raise ValueError("progress.sink=kube needs job.name and job.namespace")
        return self

    @classmethod
    def from_file(cls, path: str | Path) -> TrainerConfig:
        """Parse a JSON or YAML config file (YAML is a superset of JSON; JSON is tried first)."""
        text = Path(path).read_text(encoding="utf-8")
        return cls.from_text(text)

    @classmethod
    def from_text(cls, text: str) -> TrainerConfig:
        """Parse a JSON or YAML document."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            data = yaml.safe_load(text)
        return cls.model_validate(data)

    def to_json(self) -> str:
        """The config as the operator should render it (defaults included, stable key order)."""
        return self.model_dump_json(indent=2)
