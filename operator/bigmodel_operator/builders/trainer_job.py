"""Build a FineTuneJob's children: trainer config (ConfigMap), a least-privilege identity, and the Job.

The trainer reports progress by merge-patching the status of its own FineTuneJob. It runs as a
per-job ServiceAccount whose Role allows exactly `patch` on `finetunejobs/status` with resourceNames
set to this one job — nothing else (see docs/training.md for why this beats reading pod logs).
"""

from __future__ import annotations

import json
from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.api import GROUP, FineTuneJobSpec
from bigmodel_operator.builders.feedback_sink import dataset_source
from bigmodel_operator.builders.rayservice import GPU_PRODUCT_LABEL, GPU_RESOURCE, GPU_TOLERATION
from bigmodel_operator.builders.volumes import (
    Mounts,
    restricted_container_security,
    restricted_pod_security,
    scratch_volume,
    shm_volume,
    trainer_scratch_sizes,
)
from bigmodel_operator.config import OperatorConfig

CONFIG_DIR = "/etc/bigmodel/trainer"
CONFIG_FILE = f"{CONFIG_DIR}/config.json"
EXIT_DATASET_INVALID = 3
EXIT_CONFIG_INVALID = 2
EXIT_UNSUPPORTED = 5
DEFAULT_BACKOFF_LIMIT = 2
# terminationGracePeriodSeconds: the trainer finishes its step and writes a checkpoint on SIGTERM.
GRACE_BASE_SECONDS = 60  # process start-up of the save, fsyncs, the rename, a status report
GRACE_DEFAULT_SECONDS = 300  # without a plan (the model's config.json could not be read)
GRACE_MAX_SECONDS = 3600
CHECKPOINT_WRITE_MIB_S = 100  # a slow network volume


S3_CACHE_DIR = "/home/trainer/.cache/bigmodel/s3"


def _uses_s3(config_map: dict[str, Any]) -> bool:
    """Whether the rendered trainer config reads or writes any s3:// location."""
    rendered = json.loads(config_map["data"]["config.json"])
    return any(str(rendered[part]["uri"]).startswith("s3://") for part in ("base_model", "dataset", "output"))


def _meta(body: dict[str, Any], name: str, component: str) -> dict[str, Any]:
    owner = body["metadata"]["name"]
    return {
        "name": name,
        "namespace": body["metadata"]["namespace"],
        "labels": naming.labels(naming.LABEL_FINETUNEJOB, owner, component),
        "ownerReferences": [naming.owner_reference(body)],
    }


def _hashed(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[naming.ANNOTATION_SPEC_HASH] = naming.spec_hash(obj)
    return obj


def render_trainer_config(
    body: dict[str, Any],
    spec: FineTuneJobSpec,
    base_uri: str,
    base_revision: str | None,
    mounts: Mounts,
    feedback_sink: str | None = None,
    incumbent: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The trainer's typed config (bigmodel_training.config.TrainerConfig), snake_case.

    `feedback_sink`: the BigModel's sink (builders/feedback.py sink_uri) for `dataset.fromFeedback`.
    `incumbent`: {name, uri} of the stable adapter the result would replace (the gate compares with it).
    """
    meta = body["metadata"]
    base: dict[str, Any] = {"uri": base_uri}
    if base_revision:
        base["revision"] = base_revision
    if local := mounts.local_path(base_uri):
        base["local_path"] = local
    dataset: dict[str, Any] = dataset_source(spec.dataset, feedback_sink, meta.get("creationTimestamp"))
    if spec.dataset.validation_split is not None:
        dataset["validation_split"] = spec.dataset.validation_split
    for limit in ("max_line_bytes", "max_file_bytes"):
        if (value := getattr(spec.dataset, limit)) is not None:
            dataset[limit] = value
    if local := mounts.local_path(dataset["uri"]):
        dataset["local_path"] = local
    output: dict[str, Any] = {"uri": spec.output.uri}
    if local := mounts.local_path(spec.output.uri, read_only=False):
        output["local_path"] = local
    method = spec.method.model_dump(exclude_none=True) if spec.method else {}
    hyper = spec.hyperparameters.model_dump(exclude_none=True) if spec.hyperparameters else {}
    every = hyper.pop("checkpoint_every_steps", None)
    config: dict[str, Any] = {
        "job": {"name": meta["name"], "namespace": meta["namespace"]},
        "base_model": base,
        "dataset": dataset,
        "method": method,
        "hyperparameters": hyper,
        "output": output,
        "privacy": {"redact_pii": bool(spec.privacy and spec.privacy.redact_pii)},
        "progress": {"sink": "kube", "interval_s": 15.0},
        "hf_token_env": "HF_TOKEN",
    }
    if every:
        config["checkpoint"] = {"every_steps": every}
    if spec.evaluation:
        config["evaluation"] = _evaluation(spec, mounts)
    if incumbent is not None:
        stable = dict(incumbent)
        if local := mounts.local_path(stable["uri"]):
            stable["local_path"] = local
        config.setdefault("evaluation", {})["incumbent"] = stable
    return config


def _evaluation(spec: FineTuneJobSpec, mounts: Mounts) -> dict[str, Any]:
    """The eval gate's settings (bigmodel_training.config.EvaluationConfig); the eval set mounted read-only."""
    evaluation = spec.evaluation
    assert evaluation is not None
    out: dict[str, Any] = evaluation.model_dump(exclude_none=True, exclude={"gate"})
    if evaluation.gate:
        out["gate"] = evaluation.gate.model_dump(exclude_none=True)
    if evaluation.dataset_uri and (local := mounts.local_path(evaluation.dataset_uri)):
        out["dataset_local_path"] = local
    return out


def build_config_map(body: dict[str, Any], trainer_config: dict[str, Any]) -> dict[str, Any]:
    name = naming.trainer_config_name(body["metadata"]["name"])
    return _hashed(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(body, name, "trainer-config"),
            "data": {"config.json": json.dumps(trainer_config, indent=2, sort_keys=True)},
        }
    )


def build_identity(body: dict[str, Any]) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding that let the trainer patch only its own job's status."""
    owner = body["metadata"]["name"]
    name = naming.trainer_account_name(owner)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(body, name, "trainer")}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(body, name, "trainer"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": ["finetunejobs/status"],
                "resourceNames": [owner],
                "verbs": ["get", "patch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(body, name, "trainer"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": body["metadata"]["namespace"]}],
    }
    return [_hashed(account), _hashed(role), _hashed(binding)]


def _resources(spec: FineTuneJobSpec, gpus: int, ephemeral: str) -> dict[str, Any]:
    res = spec.resources
    cpu = (res.cpu if res and res.cpu is not None else None) or ("8" if gpus else "2")
    memory = (res.memory if res and res.memory is not None else None) or ("64Gi" if gpus else "8Gi")
    limits: dict[str, Any] = {"cpu": str(cpu), "memory": str(memory), "ephemeral-storage": ephemeral}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    return {"requests": dict(limits), "limits": limits}


_SKIPPED_ANNOTATIONS = ("kubectl.kubernetes.io/", "bigmodel.io/spec-hash")


def _pod_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The FineTuneJob's own labels and annotations (at creation) plus ours, for the training pod."""
    meta = body["metadata"]
    labels = {**(meta.get("labels") or {}), **naming.labels(naming.LABEL_FINETUNEJOB, meta["name"], "trainer")}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(_SKIPPED_ANNOTATIONS)}
    out: dict[str, Any] = {"labels": labels}
    if annotations:
        out["annotations"] = annotations
    return out


def termination_grace_seconds(spec: FineTuneJobSpec, plan: dict[str, Any] | None) -> int:
    """Time for the current optimizer step plus one checkpoint write, from the training plan
    (status.plan, camelCase): 60 s + accumulation × micro-batch time + checkpoint size at 100 MiB/s."""
    if not plan or "checkpointGiB" not in plan:
        return GRACE_DEFAULT_SECONDS
    hyper = spec.hyperparameters
    accumulation = hyper.gradient_accumulation_steps if hyper and hyper.gradient_accumulation_steps else 1
    step = accumulation * float(plan.get("microBatchSeconds") or 0.0)
    write = float(plan["checkpointGiB"]) * 1024 / CHECKPOINT_WRITE_MIB_S
    return int(min(GRACE_MAX_SECONDS, GRACE_BASE_SECONDS + step + write + 0.999))


def build_job(
    body: dict[str, Any],
    spec: FineTuneJobSpec,
    gpus: int,
    mounts: Mounts,
    config: OperatorConfig,
    config_map: dict[str, Any],
    plan: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job running `python -m bigmodel_training --config ...` on a GPU node."""
    owner = body["metadata"]["name"]
    shm, shm_mount = shm_volume("8Gi" if gpus else "512Mi")
    sizes = trainer_scratch_sizes(
        json.loads(config_map["data"]["config.json"]),
        plan,
        spec.resources.ephemeral_storage if spec.resources else None,
        config.default_ephemeral_storage,
    )
    tmp, tmp_mount = scratch_volume("tmp", "/tmp", sizes.tmp)
    cache, cache_mount = scratch_volume("cache", "/home/trainer/.cache", sizes.cache)
    cfg_volume = {"name": "trainer-config", "configMap": {"name": config_map["metadata"]["name"]}}
    cfg_mount = {"name": "trainer-config", "mountPath": CONFIG_DIR, "readOnly": True}
    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HOME", "value": "/home/trainer/.cache/huggingface"},
        # The config hash makes a changed config roll into a new pod template (and a new Job hash).
        {"name": "BIGMODEL_CONFIG_HASH", "value": config_map["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH]},
    ]
    if _uses_s3(config_map):
        # s3:// models and outputs are downloaded / staged here: the writable cache, not the read-only root.
        env.append({"name": "BIGMODEL_S3_CACHE", "value": S3_CACHE_DIR})
    creds = spec.credentials
    if creds and creds.hf_token_secret_ref:
        ref = creds.hf_token_secret_ref
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    container: dict[str, Any] = {
        "name": "trainer",
        "image": config.images.trainer,
        "command": ["python", "-m", "bigmodel_training", "--config", CONFIG_FILE],
        "env": env,
        "resources": _resources(spec, gpus, sizes.total),
        "volumeMounts": [cfg_mount, shm_mount, tmp_mount, cache_mount, *mounts.mounts],
        "securityContext": restricted_container_security(read_only_root=True),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if creds and creds.storage_secret_name:
        container["envFrom"] = [{"secretRef": {"name": creds.storage_secret_name}}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": termination_grace_seconds(spec, plan),
        "serviceAccountName": naming.trainer_account_name(owner),
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": [cfg_volume, shm, tmp, cache, *mounts.volumes],
    }
    node_selector = dict(spec.node_selector or {})
    gpu = spec.resources.gpu if spec.resources else None
    if gpus and gpu and gpu.product:
        node_selector[GPU_PRODUCT_LABEL] = gpu.product
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = ([GPU_TOLERATION] if gpus else []) + [t.to_wire() for t in spec.tolerations or []]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit if spec.backoff_limit is not None else DEFAULT_BACKOFF_LIMIT,
        # Bad data or config never gets better on retry: fail the Job at once for those exit codes.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "trainer",
                        "operator": "In",
                        "values": [EXIT_CONFIG_INVALID, EXIT_DATASET_INVALID, EXIT_UNSUPPORTED],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {"metadata": _pod_metadata(body), "spec": pod_spec},
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(body, naming.job_name(owner), "trainer"),
        "spec": job_spec,
    }
    return _hashed(job)
