"""Mounting model, adapter and data sources into pods: pvc:// becomes a volume, the rest is fetched."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:
    from bigmodel_operator.api import BigModelSpec
    from bigmodel_operator.api.bigmodel import WeightCacheSpec


@dataclass
class Mounts:
    """Volumes and mounts collected for one pod, deduplicated by claim."""

    root: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def local_path(self, uri: str, *, read_only: bool = True) -> str | None:
        """Mount the source of `uri` if it is a pvc:// URI and return its path in the pod, else None.

        file:// URIs are paths inside the image and need no volume.
        """
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            return parsed.path
        if parsed.scheme != "pvc":
            return None
        claim, sub = parsed.netloc, parsed.path.strip("/")
        name = _volume_name(claim)
        mount_path = f"{self.root}/pvc/{claim}"
        if not any(v["name"] == name for v in self.volumes):
            self.volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
            self.mounts.append({"name": name, "mountPath": mount_path, "readOnly": read_only})
        elif not read_only:
            for volume in self.volumes:
                if volume["name"] == name:
                    volume["persistentVolumeClaim"]["readOnly"] = False
            for mount in self.mounts:
                if mount["name"] == name:
                    mount["readOnly"] = False
        return f"{mount_path}/{sub}" if sub else mount_path


def pvc_claim(uri: str | None) -> str | None:
    """The claim of a pvc:// URI, else None."""
    parsed = urlparse(uri or "")
    return parsed.netloc or None if parsed.scheme == "pvc" else None


def claims_in_spec(spec: dict[str, Any]) -> set[str]:
    """Claims a BigModel's engine pods mount whatever FineTuneJobs target it: the model's, the adapters'
    and spec.adapterClaims (a raw spec, as the watch cache holds it)."""
    uris = [(spec.get("model") or {}).get("uri")] + [a.get("uri") for a in spec.get("adapters") or []]
    claims = {claim for uri in uris if (claim := pvc_claim(uri))}
    return claims | {str(claim) for claim in spec.get("adapterClaims") or []}


def _volume_name(claim: str) -> str:
    name = "pvc-" + re.sub(r"[^a-z0-9-]", "-", claim)
    return name[:63].rstrip("-")


REMOTE_SCHEMES = ("hf", "s3", "gs", "oci")
REMOTE_DATA = ("hf", "s3", "gs", "http", "https")
"""Sources the trainer downloads (models from hf:// and s3://; datasets also over http(s))."""
TMP_MOUNT, CACHE_MOUNT, SHM_MOUNT = "/tmp", "/home/ray/.cache", "/dev/shm"
SCRATCH_MOUNTS = (TMP_MOUNT, CACHE_MOUNT, SHM_MOUNT)
"""Where the serving pods mount empty scratch volumes: whatever the image has under them is hidden."""
CACHE_BASE_GIB = 4
"""Besides downloaded weights, the cache holds tokenizers, hub metadata and vLLM's compile caches."""
SCRATCH_GIB = 10
"""/tmp (Ray's session logs and spilled objects) and container logs, on top of the cache."""


TRAINER_STAGED_CHECKPOINTS = 3
"""An s3:// output is staged locally: the trainer keeps two complete checkpoints and writes a third."""
DEFAULT_DATASET_GIB = 4
"""A downloaded dataset without its own dataset.maxFileBytes may be this large (the trainer's default)."""
_GIB = 2**30


@dataclass(frozen=True)
class ScratchSizes:
    """Local disk of one pod: every emptyDir it mounts on disk gets a sizeLimit, the container the total."""

    cache: str  # sizeLimit of the emptyDir that receives weights
    tmp: str  # sizeLimit of /tmp
    total: str  # the container's ephemeral-storage request and limit

    @classmethod
    def flat(cls, size: str) -> ScratchSizes:
        """One size for everything: each volume may use it all, the kubelet holds the pod to the total."""
        return cls(cache=size, tmp=size, total=size)


def downloads_remote(*uris: str | None) -> bool:
    """Whether the pod downloads any of these sources into its cache (hf://, s3://, gs://, oci://)."""
    return any(uri and urlparse(uri).scheme in REMOTE_SCHEMES for uri in uris)


def scratch_sizes(
    weight_bytes: int | None, remote: bool, override: str | int | None = None, fallback: str = "100Gi"
) -> ScratchSizes:
    """Ephemeral storage of a model pod: `override` (spec.resources.ephemeralStorage), else from the
    plan's weight size, else `fallback` when the pod downloads weights of unknown size.

    Downloaded weights get 5% headroom (hub files carry metadata and the rounding of shards).
    """
    if override is not None:
        return ScratchSizes.flat(str(override))
    if remote and weight_bytes is None:
        return ScratchSizes.flat(fallback)
    cache = CACHE_BASE_GIB + (math.ceil(weight_bytes * 1.05 / _GIB) if remote and weight_bytes else 0)
    return ScratchSizes(cache=f"{cache}Gi", tmp=f"{SCRATCH_GIB}Gi", total=f"{cache + SCRATCH_GIB}Gi")


def trainer_scratch_sizes(
    rendered: dict[str, Any], plan: dict[str, Any] | None, override: str | int | None, fallback: str
) -> ScratchSizes:
    """Ephemeral storage of the training pod from its rendered trainer config and the training plan
    (status.plan, camelCase): downloaded base weights, a downloaded dataset, staged s3:// checkpoints
    (and the whole model for full fine-tuning), plus the cache base and /tmp. The trainer puts Hub
    downloads under /tmp and s3:// ones under the cache, so both volumes may use the whole total."""
    if override is not None:
        return ScratchSizes.flat(str(override))

    def fetched(part: str) -> bool:
        source = rendered.get(part) or {}
        return not source.get("local_path") and urlparse(str(source.get("uri") or "")).scheme in REMOTE_DATA

    weights = int((plan or {}).get("weightBytes") or 0)
    downloads_model = fetched("base_model")
    if downloads_model and not weights:
        return ScratchSizes.flat(fallback)
    gib = CACHE_BASE_GIB + SCRATCH_GIB
    if downloads_model:
        gib += math.ceil(weights * 1.05 / _GIB)
    if fetched("dataset"):
        dataset_bytes = (rendered.get("dataset") or {}).get("max_file_bytes") or DEFAULT_DATASET_GIB * _GIB
        gib += math.ceil(int(dataset_bytes) / _GIB)
    output = rendered.get("output") or {}
    if not output.get("local_path") and str(output.get("uri") or "").startswith("s3://"):
        gib += TRAINER_STAGED_CHECKPOINTS * math.ceil(float((plan or {}).get("checkpointGiB") or 0))
        if (plan or {}).get("method") == "full" and weights:
            gib += math.ceil(weights / _GIB)
    return ScratchSizes.flat(f"{gib}Gi")


def shm_volume(size: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A memory-backed /dev/shm (NCCL and vLLM's tensor parallel workers need more than 64 MiB)."""
    return (
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}},
        {"name": "dshm", "mountPath": SHM_MOUNT},
    )


def scratch_volume(name: str, path: str, size: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A writable emptyDir (caches, /tmp) so the root filesystem can stay read-only where allowed."""
    empty_dir: dict[str, Any] = {"sizeLimit": size} if size else {}
    return {"name": name, "emptyDir": empty_dir}, {"name": name, "mountPath": path}


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level securityContext that satisfies the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security(read_only_root: bool = False) -> dict[str, Any]:
    """Container-level securityContext for `restricted`."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": read_only_root,
        "runAsNonRoot": True,
    }


WEIGHT_CACHE_MOUNT = "/mnt/bigmodel/weight-cache"
WEIGHT_CACHE_VOLUME = "weight-cache"


def quantity_bytes(value: int | str) -> int:
    """A Kubernetes quantity (16Gi, 500M, 1e9, 1024) in bytes."""
    text = str(value).strip()
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
    suffixes |= {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
    for suffix, factor in suffixes.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def weight_cache_volume(
    source: BigModelSpec | WeightCacheSpec | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The shared weight cache (a BigModel's spec.weightCache) as (volumes, mounts, env) of a model or trainer
    pod: s3:// downloads (BIGMODEL_S3_CACHE), the Hugging Face hub cache (HF_HUB_CACHE, keyed by commit) and
    vLLM's cache (VLLM_CACHE_ROOT: torch.compile's artifacts, keyed by vLLM by model, config and code) live on
    the claim, so that the next replica or wake of the same model reuses them instead of compiling again."""
    from bigmodel_operator.api.bigmodel import WeightCacheSpec

    cache = source if isinstance(source, WeightCacheSpec) or source is None else source.weight_cache
    if cache is None:
        return [], [], []
    volume = {"name": WEIGHT_CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.claim_name}}
    mount = {"name": WEIGHT_CACHE_VOLUME, "mountPath": WEIGHT_CACHE_MOUNT}
    env = [
        {"name": "BIGMODEL_S3_CACHE", "value": f"{WEIGHT_CACHE_MOUNT}/s3"},
        {"name": "HF_HUB_CACHE", "value": f"{WEIGHT_CACHE_MOUNT}/hf"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{WEIGHT_CACHE_MOUNT}/vllm"},
    ]
    if cache.max_size is not None:
        env.append({"name": "BIGMODEL_WEIGHT_CACHE_MAX_BYTES", "value": str(quantity_bytes(cache.max_size))})
    return [volume], [mount], env
