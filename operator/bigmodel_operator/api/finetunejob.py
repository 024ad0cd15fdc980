"""FineTuneJob: "adapt this model to my data" — becomes a batch/v1 Job running the trainer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from bigmodel_operator.api.base import (
    INLINE_CONFIG_LIMITS,
    REVISION_PATTERN,
    ApiModel,
    Condition,
    InlineModelConfig,
    LabelName,
    NodeSelector,
    ObjectName,
    ResourcesSpec,
    SafeFetchedLocation,
    SafeLocation,
    SecretKeyRef,
    Toleration,
    cel,
    location_rules,
    rules,
)
from bigmodel_operator.api.bigmodel import MODEL_URI_PATTERN
from bigmodel_operator.api.feedback import FromFeedbackSpec
from bigmodel_operator.planning import TrainingPlan

DATA_URI_PATTERN = r"^(hf://\S+|s3://\S+|gs://\S+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file:///\S*|https?://\S+)$"
# A mounted filesystem (pvc://, file://) or an S3 bucket: the trainer stages s3:// outputs locally and
# uploads each checkpoint and the result (credentials from `credentials.storageSecretName`).
OUTPUT_URI_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file:///\S*|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/\S*)?)$"
)


class BigModelRef(ApiModel):
    """A BigModel in the same namespace."""

    name: ObjectName = Field(description="BigModel name.")


class BaseModelSpec(ApiModel):
    """The pretrained model to adapt: a URI, or the model a BigModel serves."""

    model_config = ConfigDict(
        json_schema_extra=cel("has(self.uri) != has(self.bigModelRef)", "set exactly one of uri or bigModelRef")
    )

    uri: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description="Model location (as BigModel; no '..' path segments).",
        json_schema_extra=location_rules("baseModel.uri"),
    )
    revision: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Hub revision for hf:// models; no spaces or control characters.",
        json_schema_extra=location_rules("baseModel.revision"),
    )
    big_model_ref: BigModelRef | None = Field(default=None, description="Fine-tune the model this BigModel serves.")
    config: InlineModelConfig | None = Field(
        default=None,
        description=f"The model's config.json inline, for the training memory plan: {INLINE_CONFIG_LIMITS}.",
    )


class DatasetSpec(ApiModel):
    """Training data: a JSON Lines file in one of three formats, or a BigModel's feedback."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            "has(self.uri) != has(self.fromFeedback)",
            "set exactly one of dataset.uri or dataset.fromFeedback",
            ".uri",
            "!has(self.uri) || has(self.format)",
            "dataset.uri needs dataset.format",
            ".format",
            "!has(self.fromFeedback) || !has(self.format) || self.format == 'chat'",
            "feedback records are chat conversations: dataset.format must be chat (or left out)",
            ".format",
        )
    )

    uri: Annotated[str | None, SafeFetchedLocation] = Field(
        default=None,
        max_length=2048,
        pattern=DATA_URI_PATTERN,
        description=(
            "JSONL file: pvc://claim/path, s3://, gs://, hf://, http(s):// or file:/// (no '..' segments). "
            "http(s):// must reach a public address: loopback, link-local (cloud metadata), private and "
            "other internal addresses are refused at admission and by the trainer after DNS resolution "
            "and on every redirect."
        ),
        json_schema_extra=location_rules("dataset.uri", fetched=True),
    )
    from_feedback: FromFeedbackSpec | None = Field(
        default=None,
        description="Instead of uri: the feedback a BigModel collected (its spec.feedback.sink), read-only.",
    )
    format: Literal["chat", "instruction", "completion"] | None = Field(
        default=None,
        description=(
            'chat: {"messages": [{"role", "content"}...]}; instruction: {"instruction", '
            '"input", "output"}; completion: {"prompt", "completion"}. Required with uri; fromFeedback is chat.'
        ),
    )
    validation_split: float | None = Field(
        default=None, ge=0, le=0.5, description="Fraction held out for eval loss (default 0)."
    )
    max_line_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=2**31,
        description="Longest line read (default 16 MiB); longer lines are reported with their line numbers.",
    )
    max_file_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=2**40,
        description="Largest dataset file (default 64 GiB); it is streamed into a memory-mapped token cache.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.uri is None) == (self.from_feedback is None):
            raise ValueError("set exactly one of dataset.uri or dataset.fromFeedback")
        if self.uri is not None and self.format is None:
            raise ValueError("dataset.uri needs dataset.format")
        if self.from_feedback is not None and self.format not in (None, "chat"):
            raise ValueError("feedback records are chat conversations: dataset.format must be chat (or left out)")
        return self


class MethodSpec(ApiModel):
    """How the model is adapted."""

    type: Literal["lora", "qlora", "full"] | None = Field(
        default=None, description="lora (default), qlora (4-bit base, needs a GPU) or full."
    )
    rank: int | None = Field(default=None, ge=1, le=1024, description="LoRA rank r (default 16).")
    alpha: float | None = Field(default=None, gt=0, le=4096, description="LoRA alpha (default 2 × rank).")
    dropout: float | None = Field(default=None, ge=0, lt=1, description="LoRA dropout (default 0.05).")
    target_modules: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Module names LoRA adapts (default: all linear layers of the transformer blocks).",
    )


class HyperparametersSpec(ApiModel):
    """Training hyperparameters; empty fields take the trainer's defaults."""

    epochs: int | None = Field(default=None, ge=1, le=1000, description="Passes over the data (default 1).")
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Stop after this many optimizer steps."
    )
    learning_rate: float | None = Field(default=None, gt=0, lt=1, description="Peak learning rate.")
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="Sequences per micro-batch.")
    gradient_accumulation_steps: int | None = Field(
        default=None, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    max_seq_length: int | None = Field(
        default=None, ge=16, le=1_048_576, description="Tokens per sequence; longer examples are refused."
    )
    packing: bool | None = Field(default=None, description="Pack short examples into one sequence (default true).")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1, description="Random seed.")
    checkpoint_every_steps: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Save a resumable checkpoint every N steps (default 100)."
    )


class OutputSpec(ApiModel):
    """Where the adapter (or full model) is written."""

    uri: Annotated[str, SafeLocation] = Field(
        max_length=2048,
        pattern=OUTPUT_URI_PATTERN,
        description=(
            "pvc://claim/path (a PersistentVolumeClaim, mounted read-write), file:///path, or "
            "s3://bucket/prefix (S3 or an S3-compatible store: endpoint and keys from the Secret named by "
            "credentials.storageSecretName; checkpoints are uploaded as they are written); no '..' segments."
        ),
        json_schema_extra=location_rules("output.uri"),
    )


class PrivacySpec(ApiModel):
    """Privacy controls applied before data reaches the model."""

    redact_pii: bool | None = Field(
        default=None,
        alias="redactPII",
        description="Replace emails, phone numbers, card numbers, IBANs, IPs, IDs and secrets with placeholders.",
    )


class CanarySpec(ApiModel):
    """How a new adapter version is tried next to the stable one before it takes all the traffic."""

    weight: int | None = Field(
        default=None,
        ge=1,
        le=100,
        description=(
            "Percent of the adapter's traffic the new version gets while it is a candidate (default 20). "
            "100 skips the canary: the version becomes stable as soon as its gate passes."
        ),
    )
    split: Literal["auto", "key", "request"] | None = Field(
        default=None,
        description=(
            "key: each API key keeps one version (sticky); request: every request is drawn afresh. auto (default): "
            "request when the BigModel's auth.mode is none, else key. Use request with a single key."
        ),
    )
    min_requests: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Observations on each version before any decision (default 20)."
    )
    false_rollback_rate: float | None = Field(
        default=None,
        gt=0,
        le=0.5,
        description=(
            "The most often a candidate as good as the stable version is rolled back (default 0.05), split over the "
            "signals judged; the sequential test may look after every request (docs/loop.md, Canary)."
        ),
    )
    max_error_rate_increase: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Roll back once the candidate's error rate is shown higher than the stable's; promote once it is shown "
            "higher by less than this (default 0.02)."
        ),
    )
    max_latency_ratio: float | None = Field(
        default=None,
        gt=1,
        le=1000,
        description=(
            "Roll back once the candidate is shown slower than this x the stable (geometric mean of the time to the "
            "first byte), promote once shown faster than that (default 1.5)."
        ),
    )
    max_bad_answer_increase: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description=(
            "Quality, with feedback on: roll back once the share of bad rated answers (rating 1-2 or corrected) is "
            "shown higher than the stable's; promote once higher by less than this (default 0.1)."
        ),
    )
    quality: Literal["auto", "off", "guard", "required"] | None = Field(
        default=None,
        description=(
            "Ratings as a signal: required (promotion waits for rating evidence), guard (rollback only), off. "
            "auto (default): required when the BigModel's feedback is enabled, else off."
        ),
    )
    deadline_seconds: int | None = Field(
        default=None, ge=60, le=90 * 86_400, description="An undecided canary ends this long after it began (86400)."
    )
    on_deadline: Literal["rollback", "promote"] | None = Field(
        default=None, description="How an undecided canary ends at its deadline (default rollback: keep the stable)."
    )


class DeployToSpec(ApiModel):
    """Serve the result from a BigModel as a new version of a LoRA adapter."""

    big_model: ObjectName = Field(description="BigModel in this namespace.")
    adapter_name: LabelName | None = Field(
        default=None,
        description=(
            "Name clients call (`<servedName>:<adapterName>`), a DNS label as BigModel adapters[].name "
            "(default: the FineTuneJob's name). Every FineTuneJob with the same adapterName is a version of it."
        ),
    )
    canary: CanarySpec | None = Field(default=None, description="Canary of this version (default 20 %).")


class EvalGateSpec(ApiModel):
    """Thresholds the trainer's evaluation must meet before the adapter gets any traffic."""

    max_loss_ratio: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="Largest adapted / base held-out loss allowed (default 1.0: the adapter must not be worse).",
    )
    min_score: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Smallest share of eval-set examples the adapted model must pass (default: not checked).",
    )
    require_held_out: bool | None = Field(
        default=None,
        description=(
            "Without held-out data (dataset.validationSplit 0 and no datasetUri) nothing is compared and the adapter "
            "is not promoted (default true; the job still succeeds). false: promote anyway, the canary alone judges."
        ),
    )


class EvaluationSpec(ApiModel):
    """The eval gate: held-out loss against the base model, plus an optional scored eval set."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!has(self.scorer) || self.scorer != 'regex' || has(self.pattern) || has(self.datasetUri)",
            "scorer regex needs pattern (or references in the eval set)",
        )
    )

    dataset_uri: Annotated[str | None, SafeFetchedLocation] = Field(
        default=None,
        max_length=2048,
        pattern=DATA_URI_PATTERN,
        description=(
            'Eval set, JSONL: {"prompt", "reference"} or {"messages": [...]} whose last assistant turn is the '
            "reference. The adapted and the base model generate an answer for each prompt. No '..' segments; "
            "http(s):// only to public addresses (as dataset.uri)."
        ),
        json_schema_extra=location_rules("evaluation.datasetUri", fetched=True),
    )
    scorer: Literal["exact", "contains", "json", "regex"] | None = Field(
        default=None,
        description=(
            "How an answer passes: exact (equals the reference, whitespace trimmed), contains (holds the "
            "reference), json (parses as JSON), regex (matches `pattern`, else the reference). Default exact."
        ),
    )
    pattern: str | None = Field(default=None, max_length=1024, description="Regular expression for scorer regex.")
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=4096, description="Tokens generated per eval prompt (default 64)."
    )
    max_examples: int | None = Field(
        default=None, ge=1, le=10_000, description="Eval-set examples used, from the top (default 200)."
    )
    gate: EvalGateSpec | None = Field(default=None, description="Thresholds (default: maxLossRatio 1.0).")


class TrainingCredentialsSpec(ApiModel):
    """Credentials for reading models and data and writing the output."""

    hf_token_secret_ref: SecretKeyRef | None = Field(default=None, description="Hugging Face token.")
    storage_secret_name: ObjectName | None = Field(
        default=None,
        description=(
            "Secret whose keys become the trainer's environment: for s3:// locations AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, and for an S3-compatible store AWS_ENDPOINT_URL (and AWS_REGION)."
        ),
    )


class DistributedSpec(ApiModel):
    """Training on several GPUs or nodes (torchrun workers: one per GPU, or one per pod on the CPU)."""

    nodes: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=(
            "Pods of the job, each with resources.gpu.count GPUs: more than 1 renders an Indexed Job and a headless "
            "Service for the workers' rendezvous. Empty: the plan's count (one pod unless the model needs more GPUs "
            "than one node has; status.plan.layout says why)."
        ),
    )
    strategy: Literal["auto", "ddp", "fsdp"] | None = Field(
        default=None,
        description=(
            "ddp: every GPU holds the whole model (DistributedDataParallel); fsdp: weights, gradients and optimizer "
            "state sharded over all GPUs (FSDP2). auto (default): ddp when the model and its optimizer state fit on "
            "one GPU, else fsdp. batchSize and gradientAccumulationSteps are per GPU."
        ),
    )


class FineTuneJobSpec(ApiModel):
    """Desired fine-tuning run. Immutable once created."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!has(self.method) || !has(self.method.type) || self.method.type != 'qlora' || "
            "!has(self.resources) || !has(self.resources.gpu) || !has(self.resources.gpu.count) || "
            "self.resources.gpu.count > 0",
            "qlora loads the base model in 4 bits with bitsandbytes and needs a GPU: set resources.gpu.count >= 1",
            "!has(self.deployTo) || !has(self.method) || !has(self.method.type) || self.method.type != 'full'",
            "deployTo attaches a LoRA adapter; full fine-tuning produces a whole model",
            "!has(self.method) || !has(self.method.type) || self.method.type != 'qlora' || "
            "!has(self.distributed) || !has(self.distributed.strategy) || self.distributed.strategy != 'fsdp'",
            "qlora cannot be sharded with fsdp (bitsandbytes' 4-bit weights are not FSDP2 tensors): use strategy ddp "
            "(each GPU holds the whole 4-bit model) or method lora with fsdp",
        )
    )

    base_model: BaseModelSpec = Field(description="The pretrained model to adapt.")
    dataset: DatasetSpec = Field(description="Training data.")
    method: MethodSpec | None = Field(default=None, description="LoRA, QLoRA or full.")
    hyperparameters: HyperparametersSpec | None = Field(default=None, description="Training settings.")
    resources: ResourcesSpec | None = Field(default=None, description="Resources of the training pod.")
    output: OutputSpec = Field(description="Where the result is written.")
    privacy: PrivacySpec | None = Field(default=None, description="PII redaction.")
    deploy_to: DeployToSpec | None = Field(
        default=None,
        description=(
            "Serve the result from a BigModel as a version of a LoRA adapter once the job succeeded and its "
            "eval gate passed: loaded into the running replicas without a restart, canaried against the "
            "stable version, then promoted (see docs/loop.md). The BigModel's spec is never written."
        ),
    )
    evaluation: EvaluationSpec | None = Field(
        default=None,
        description="Eval gate: thresholds and an optional eval set (default: held-out loss no worse than the base's).",
    )
    backoff_limit: int | None = Field(
        default=None, ge=0, le=20, description="Retries of the training pod (default 2); it resumes from checkpoints."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=60, le=30 * 24 * 3600, description="Wall-clock limit of the whole job."
    )
    credentials: TrainingCredentialsSpec | None = Field(default=None, description="Credentials.")
    node_selector: NodeSelector | None = None
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description="Extra tolerations.")
    distributed: DistributedSpec | None = Field(
        default=None, description="Several GPUs or nodes: how many pods, and whether the model is sharded."
    )
    queue_name: LabelName | None = Field(
        default=None,
        description=(
            "Kueue LocalQueue to submit the training Job to: the Job carries the label kueue.x-k8s.io/queue-name and "
            "is created suspended; Kueue starts it when the queue admits it (status phase Queued until then). The "
            "label kueue.x-k8s.io/queue-name on the FineTuneJob itself does the same."
        ),
    )


class TrainingProgress(ApiModel):
    """Training progress, reported by the trainer."""

    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Recent training loss.")
    eval_loss: float | None = Field(default=None, description="Latest eval loss.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds left.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput.")
    percent: int | None = Field(default=None, description="step / totalSteps in percent.")


class EvaluationComparison(ApiModel):
    """The candidate against the version it would replace, on the same examples."""

    metric: Literal["heldOutLoss", "evalScore"] = Field(description="Held-out token loss, or the eval-set score.")
    candidate: float | None = Field(default=None, description="The new adapter's value.")
    incumbent: float | None = Field(default=None, description="The incumbent's value on the same examples.")
    n: int | None = Field(default=None, description="Examples compared.")
    ratio: float | None = Field(default=None, description="heldOutLoss: candidate / incumbent.")
    difference: float | None = Field(default=None, description="evalScore: candidate - incumbent.")
    ci95: list[float] | None = Field(default=None, max_length=2, description="95 % confidence interval of it.")
    passed: bool | None = Field(default=None, description="Whether this comparison passed.")


class EvaluationResult(ApiModel):
    """What the trainer measured after training, and whether the gate passed."""

    base_loss: float | None = Field(default=None, description="Base model's token loss on the held-out split.")
    adapted_loss: float | None = Field(default=None, description="Adapted model's loss on the same examples.")
    base_perplexity: float | None = Field(default=None, description="exp(baseLoss).")
    adapted_perplexity: float | None = Field(default=None, description="exp(adaptedLoss).")
    loss_ratio: float | None = Field(default=None, description="adaptedLoss / baseLoss.")
    held_out_examples: int | None = Field(default=None, description="Held-out examples the losses are over.")
    score: float | None = Field(default=None, description="Share of eval-set examples the adapted model passed.")
    base_score: float | None = Field(default=None, description="The same for the base model.")
    examples: int | None = Field(default=None, description="Eval-set examples scored.")
    scorer: str | None = Field(default=None, description="Scorer used on the eval set.")
    passed: bool | None = Field(default=None, description="Whether the gate passed.")
    incumbent: str | None = Field(
        default=None, description="The version compared with: the stable adapter it would replace, or 'base model'."
    )
    comparisons: list[EvaluationComparison] | None = Field(
        default=None, max_length=8, description="Candidate against the incumbent: metric, both values, N, 95 % CI."
    )
    outcome: Literal["Passed", "Failed", "NotCompared"] | None = Field(
        default=None, description="NotCompared: no held-out data, so not promoted (evaluation.gate.requireHeldOut)."
    )
    reasons: list[str] | None = Field(default=None, description="Why the gate passed or failed, one line per check.")


class FineTuneJobStatus(ApiModel):
    """Observed state of a fine-tuning run."""

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Planned, Complete, Failed, Promoted (deployTo only).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    phase: Literal["Pending", "Queued", "Running", "Succeeded", "Failed"] | None = Field(
        default=None, description="Phase (Queued: the Job waits for Kueue to admit it)."
    )
    start_time: datetime | None = Field(default=None, description="When the training pod started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    progress: TrainingProgress | None = Field(default=None, description="Training progress.")
    checkpoint: str | None = Field(default=None, description="Newest complete checkpoint.")
    adapter_uri: str | None = Field(default=None, description="Where the result was written.")
    redactions: dict[str, int] | None = Field(default=None, description="PII placeholders inserted, by type.")
    plan: TrainingPlan | None = Field(default=None, description="Training memory plan.")
    job_name: str | None = Field(default=None, description="Name of the batch/v1 Job.")
    base_model_uri: str | None = Field(
        default=None, description="The base model actually used (resolved through bigModelRef when set)."
    )
    evaluation: EvaluationResult | None = Field(
        default=None, description="The eval gate's numbers and verdict, reported by the trainer."
    )


class FineTuneJob(ApiModel):
    """A FineTuneJob custom resource."""

    api_version: Literal["bigmodel.io/v1alpha1"] = "bigmodel.io/v1alpha1"
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
