"""The engine deployment: Ray Serve LLM's `LLMServer` (vLLM), plus what Ray's does not do for us.

- Adapters come from mounted directories or s3:// prefixes named in the deployment's `user_config`
  (`EngineConfig`), applied by `reconfigure()` without restarting the engine. An s3:// adapter (or
  model) is downloaded by the replica into its cache (storage.py: endpoint and keys from AWS_*
  variables, so any S3-compatible store works) on first use; Ray's own loader has no endpoint setting.
  vLLM loads an adapter on its first request (Serve's multiplexing keeps at most
  `lora.max_cpu_loras` per replica and routes an adapter's requests to replicas that have it).
- `metrics_text()` returns vLLM's Prometheus metrics of this replica (`vllm:` names), which the
  ingress merges into `GET /metrics`.
- Its cold start (Downloading with bytes, or `cached` from the shared weight cache; Loading; Compiling;
  ready) goes into the BigModel's `status.replicaStartups` while it happens (startup_report.py), and its
  entry is removed when Serve stops the replica (scale down, scale to zero).
- `responses()` serves `POST /v1/responses` with vLLM's own Responses implementation (responses_api.py),
  which Ray Serve LLM 2.60 does not route.
- Streamed answers leave the replica first chunk first (stream_batching.py): Ray's timer batching would
  hold the first token for up to its 50 ms interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, ClassVar

from fastapi import HTTPException
from ray.serve.llm import LLMConfig
from ray.serve.llm.deployment import LLMServer

from bigmodel_serving import storage
from bigmodel_serving.args import EngineConfig, parse_engine_config
from bigmodel_serving.ray_internals import (
    LoraModelLoader,
    adapter_config,
    resolve_multiplexed_adapter,
    vllm_responses_handler,
)
from bigmodel_serving.responses_api import engine_answer, streamed
from bigmodel_serving.startup_report import (
    LogFollower,
    StartupTimeline,
    StatusReporter,
    first_engine_on_pod,
    own_output_files,
    report_target,
)
from bigmodel_serving.stream_batching import first_then_batched

logger = logging.getLogger("ray.serve")


MIN_CPU_KV_CACHE_BYTES = 32 * 1024 * 1024
_CGROUP_LIMIT_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def memory_limit_bytes() -> int:
    """The container's memory limit (cgroup v2 or v1), else the host's RAM."""
    import psutil

    total = int(psutil.virtual_memory().total)
    for path in _CGROUP_LIMIT_FILES:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            return min(int(raw), total)
    return total


def cpu_kv_cache_bytes(fraction: float, limit_bytes: int) -> int:
    """The KV cache of a CPU engine: `fraction` of the memory limit, at least 32 MiB."""
    return max(MIN_CPU_KV_CACHE_BYTES, int(fraction * limit_bytes))


class MountedAdapterLoader(LoraModelLoader):
    """Resolves `<model>:<adapter>` to the adapter's mounted directory (no download, no copy)."""

    # Filled by BigModelEngine.reconfigure; shared with the loader Ray's LLMServer creates.
    paths: ClassVar[dict[str, str]] = {}

    async def load_model_from_config(self, lora_model_id: str, llm_config: Any) -> Any:
        path = self.paths.get(lora_model_id)
        if path is None:
            raise HTTPException(404, f"The model `{lora_model_id}` does not exist.")
        if path.startswith("s3://"):
            try:
                path = str(await asyncio.to_thread(storage.fetch_dir, path))
            except storage.StorageError as exc:
                logger.warning("bigmodel: adapter %s: %s", lora_model_id, exc)
                raise HTTPException(503, f"The adapter of `{lora_model_id}` could not be downloaded.") from exc
        return adapter_config(lora_model_id, path)


async def _download_s3_model(llm_config: LLMConfig, timeline: StartupTimeline) -> None:
    """An s3:// model is downloaded into the replica's (or the shared weight) cache first; vLLM then loads
    the directory. The Downloading phase reports bytes as they arrive, or `cached` when nothing was needed."""
    loading: Any = llm_config.model_loading_config
    source = loading.get("model_source") if isinstance(loading, dict) else loading.model_source
    if not (isinstance(source, str) and source.startswith("s3://")):
        return
    timeline.begin("Downloading", "download")
    fetched = await asyncio.to_thread(storage.fetch, source, timeline.progress)
    timeline.downloaded(fetched.bytes_total, fetched.cached)
    what = "found complete in the cache" if fetched.cached else f"downloaded ({fetched.bytes_downloaded} bytes)"
    logger.info("bigmodel: %s %s at %s", source, what, fetched.path)
    local = str(fetched.path)
    if isinstance(loading, dict):
        loading["model_source"] = local
    else:
        loading.model_source = local


def _startup_timeline(llm_config: LLMConfig) -> tuple[StartupTimeline, StatusReporter | None]:
    """This replica's timeline, reporting into its BigModel's status when it runs in a cluster."""
    from ray import serve

    in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    timeline = StartupTimeline(
        pod=socket.gethostname() if in_cluster else None,
        constructed=time.time(),
        first_on_pod=first_engine_on_pod() if in_cluster else None,
    )
    try:
        context = serve.get_replica_context()
        replica_id, app_name = context.replica_id.unique_id, context.app_name
    except Exception:  # not in a Serve replica (unit tests)
        return timeline, None
    target = report_target(app_name)
    if target is None:
        return timeline, None
    reporter = StatusReporter(*target, "replicaStartups", replica_id)
    timeline.on_change = lambda urgent: reporter.submit(timeline.report(), urgent)
    return timeline, reporter


class BigModelEngine(LLMServer):
    """One replica: vLLM started by Ray Serve LLM; adapters and metrics as described above."""

    async def __init__(  # type: ignore[misc]
        self, llm_config: LLMConfig, *, hf_token_env: str | None = None, cpu_kv_cache_fraction: float | None = None
    ) -> None:
        if cpu_kv_cache_fraction is not None:
            # vLLM's CPU build reads gpu_memory_utilization as a share of the host's RAM for the whole
            # process, which fails on a small share of a big host and overshoots a pod's memory limit.
            kv_bytes = cpu_kv_cache_bytes(cpu_kv_cache_fraction, memory_limit_bytes())
            llm_config.update_engine_kwargs(kv_cache_memory_bytes=kv_bytes)
        if hf_token_env and hf_token_env != "HF_TOKEN" and os.environ.get(hf_token_env):
            os.environ.setdefault("HF_TOKEN", os.environ[hf_token_env])
        self._model_id = llm_config.model_id
        self._adapter_paths: dict[str, str] = {}
        loader = type("ReplicaAdapterLoader", (MountedAdapterLoader,), {"paths": self._adapter_paths})
        started = time.monotonic()
        timeline, self._startup_reporter = _startup_timeline(llm_config)
        timeline.on_change(True)  # the replica exists: its entry appears before the download starts
        follower = LogFollower(timeline, own_output_files()).start()
        try:
            await _download_s3_model(llm_config, timeline)
            timeline.begin("Loading", "engine")
            await super().__init__(llm_config, model_downloader=loader)
        except BaseException as error:
            follower.stop()
            timeline.finish(failed=f"{type(error).__name__}: {error}")
            raise
        follower.stop()
        timeline.finish()
        self.startup = timeline
        self._load_s = time.monotonic() - started
        self._loaded_at = time.time()
        logger.info("bigmodel: %s engine started in %.1f s", llm_config.model_id, self._load_s)

    async def __del__(self) -> None:  # Serve calls it when the replica stops (scale down, scale to zero)
        reporter = getattr(self, "_startup_reporter", None)
        if reporter is not None:
            reporter.submit(None)  # the replica's entry leaves the BigModel's status
            await asyncio.to_thread(reporter.close)
        await super().__del__()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's `user_config` at start and whenever it changes."""
        config: EngineConfig = parse_engine_config(user_config)
        base = self._model_id
        paths = {
            f"{base}:{adapter.name}": str(adapter.resolved_local_path() or adapter.uri) for adapter in config.adapters
        }
        self._adapter_paths.clear()
        self._adapter_paths.update(paths)
        logger.info("bigmodel: adapters %s", ", ".join(sorted(paths)) or "none")

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> AsyncGenerator[list[Any], None]:
        """Streams of chat, completions and responses: the first chunk at once, then Ray's interval
        (`stream_batching_interval_ms`, default 50 ms) between batches (stream_batching.py)."""
        return first_then_batched(generator, self._get_batch_interval_ms() / 1000)

    async def responses(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator[Any, None]:
        """`POST /v1/responses` on this replica's engine (responses_api.py): one dict or an ErrorResponse;
        streamed, server-sent event strings, batched like chat streams."""
        await resolve_multiplexed_adapter(self)
        answer = engine_answer(vllm_responses_handler(self), request)
        return self._batch_output_stream(answer) if streamed(request) else answer

    async def replica_info(self) -> dict[str, Any]:
        """Which replica this is and when its engine loaded (tests prove light edits keep it)."""
        from ray import serve

        return {
            "replica_id": serve.get_replica_context().replica_id.unique_id,
            "pid": os.getpid(),
            "loaded_at": self._loaded_at,
            "load_s": self._load_s,
        }

    async def metrics_text(self) -> str:
        """This replica's vLLM metrics in Prometheus text format."""
        from prometheus_client import REGISTRY, generate_latest

        return generate_latest(REGISTRY).decode()

    async def metrics_snapshot(self) -> dict[str, str]:
        """This replica's Serve id (stable for its life, as in Serve's logs and state API) and its metrics."""
        from ray import serve

        return {"replica": serve.get_replica_context().replica_id.unique_id, "text": await self.metrics_text()}
