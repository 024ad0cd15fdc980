"""Progress reports from the trainer into the FineTuneJob's status (or a file), stdlib only.

The trainer sends a JSON merge patch to the status subresource of its own FineTuneJob:

    PATCH /apis/bigmodel.io/v1alpha1/namespaces/{ns}/finetunejobs/{name}/status
    Content-Type: application/merge-patch+json
    {"status": {"progress": {"step", "totalSteps", "percent", "epoch", "loss", "evalLoss",
                             "etaSeconds", "tokensPerSecond"},
                "checkpoint": "<uri>", "adapterUri": "<uri>", "redactions": {"EMAIL": 3},
                "evaluation": {"baseLoss", "adaptedLoss", ..., "passed", "reasons"}}}

Credentials: `BIGMODEL_KUBECONFIG` or `KUBECONFIG` (a kubeconfig with a token or client
certificate; used by tests and local runs), else the pod's service account (token, ca.crt and
KUBERNETES_SERVICE_HOST/PORT). The operator's per-job Role allows only `patch` on
`finetunejobs/status` of this one job. A failed PATCH is logged and never stops training.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import math
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from bigmodel_training.config import ProgressConfig, TrainerConfig

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "bigmodel.io/v1alpha1"
TIMEOUT_S = 10.0


class Sink(Protocol):
    """Somewhere a status patch can go."""

    def send(self, patch: dict[str, Any]) -> bool:
        """Deliver one patch; return False (never raise) on failure."""
        ...


@dataclass
class KubeConnection:
    """How to reach the API server: base URL, TLS context and a way to get the bearer token."""

    server: str
    ssl_context: ssl.SSLContext | None = None
    token: Callable[[], str | None] = field(default=lambda: None)

    @classmethod
    def from_environment(cls) -> KubeConnection:
        """A kubeconfig from BIGMODEL_KUBECONFIG/KUBECONFIG, else the in-cluster service account."""
        path = os.environ.get("BIGMODEL_KUBECONFIG") or os.environ.get("KUBECONFIG")
        if path:
            return cls.from_kubeconfig(Path(path.split(os.pathsep)[0]))
        return cls.in_cluster()

    @classmethod
    def in_cluster(cls, sa_dir: Path = SA_DIR) -> KubeConnection:
        """The pod's service account; the token file is re-read for each request (it rotates)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError("not in a cluster (KUBERNETES_SERVICE_HOST unset) and no kubeconfig given")
        if ":" in host:
            host = f"[{host}]"
        context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
        token_file = sa_dir / "token"
        return cls(f"https://{host}:{port}", context, lambda: token_file.read_text().strip())

    @classmethod
    def from_kubeconfig(cls, path: Path) -> KubeConnection:
        """The current context of a kubeconfig: token, tokenFile or client certificate auth."""
        import yaml

        doc = yaml.safe_load(path.read_text())
        contexts = {c["name"]: c["context"] for c in doc.get("contexts", [])}
        context = contexts[doc["current-context"]]
        cluster = {c["name"]: c["cluster"] for c in doc.get("clusters", [])}[context["cluster"]]
        user = {u["name"]: u.get("user") or {} for u in doc.get("users", [])}.get(context.get("user", ""), {})
        server = cluster["server"]
        ssl_context = None
        if server.startswith("https://"):
            ssl_context = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                ssl_context.check_hostname = False
                ssl_context.verify_mode = ssl.CERT_NONE
            elif "certificate-authority-data" in cluster:
                ssl_context.load_verify_locations(
                    cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                )
            elif "certificate-authority" in cluster:
                ssl_context.load_verify_locations(cafile=_relative(path, cluster["certificate-authority"]))
            _load_client_cert(ssl_context, path, user)
        token: Callable[[], str | None]
        if "token" in user:
            value = str(user["token"])
            token = lambda: value  # noqa: E731
        elif "tokenFile" in user:
            token_path = Path(_relative(path, user["tokenFile"]))
            token = lambda: token_path.read_text().strip()  # noqa: E731
        else:
            token = lambda: None  # noqa: E731
        return cls(server.rstrip("/"), ssl_context, token)


def _relative(kubeconfig: Path, name: str) -> str:
    return str(Path(name) if os.path.isabs(name) else kubeconfig.parent / name)


def _load_client_cert(context: ssl.SSLContext, kubeconfig: Path, user: dict[str, Any]) -> None:
    if "client-certificate-data" in user:
        # ssl wants files: write the PEMs to a private temporary directory just long enough to load.
        with tempfile.TemporaryDirectory() as scratch:
            cert, key = Path(scratch) / "tls.crt", Path(scratch) / "tls.key"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.touch(mode=0o600)
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            context.load_cert_chain(str(cert), str(key))
    elif "client-certificate" in user:
        context.load_cert_chain(
            _relative(kubeconfig, user["client-certificate"]), _relative(kubeconfig, user["client-key"])
        )


class KubeSink:
    """Merge-patches the status subresource of one FineTuneJob."""

    def __init__(self, namespace: str, name: str, connection: KubeConnection | None = None) -> None:
        self.path = f"/apis/{GROUP_VERSION}/namespaces/{namespace}/finetunejobs/{name}/status"
        self._connection = connection

    def send(self, patch: dict[str, Any]) -> bool:
        """PATCH the status; log and return False on any failure."""
        try:
            connection = self._connection or KubeConnection.from_environment()
            self._connection = connection
            url = urlsplit(connection.server)
            conn: http.client.HTTPConnection
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(
                    url.hostname or "", url.port or 443, timeout=TIMEOUT_S, context=connection.ssl_context
                )
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=TIMEOUT_S)
            headers = {"Content-Type": "application/merge-patch+json", "Accept": "application/json"}
            token = connection.token()
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                conn.request("PATCH", url.path.rstrip("/") + self.path, body=json.dumps(patch), headers=headers)
                response = conn.getresponse()
                detail = response.read()[:300].decode("utf-8", "replace")
            finally:
                conn.close()
            if response.status >= 300:
                log.warning("progress PATCH %s answered %s: %s", self.path, response.status, detail)
                return False
            return True
        except Exception as exc:
            log.warning("progress PATCH %s failed: %s", self.path, exc)
            return False


class FileSink:
    """Keeps the merged status in a JSON file (rewritten atomically): for local runs and tests."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.status: dict[str, Any] = {}

    def send(self, patch: dict[str, Any]) -> bool:
        """Merge the patch's status into the file."""
        try:
            _merge(self.status, patch.get("status", {}))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps({"status": self.status}, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
            return True
        except OSError as exc:
            log.warning("progress file %s: %s", self.path, exc)
            return False


class NullSink:
    """Drops every report."""

    def send(self, patch: dict[str, Any]) -> bool:
        """Do nothing."""
        return True


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch, applied in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def make_sink(config: TrainerConfig) -> Sink:
    """The sink the config asks for."""
    progress: ProgressConfig = config.progress
    if progress.sink == "kube" and config.job is not None:
        return KubeSink(config.job.namespace, config.job.name)
    if progress.sink == "file" and progress.file_path:
        return FileSink(progress.file_path)
    return NullSink()


def _number(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


class ProgressReporter:
    """Throttles reports to one per `interval_s` (forced ones always go out)."""

    def __init__(self, sink: Sink, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self.sent = 0

    def report(
        self,
        *,
        step: int,
        total_steps: int,
        epoch: float,
        loss: float | None = None,
        eval_loss: float | None = None,
        eta_seconds: float | None = None,
        tokens_per_second: float | None = None,
        checkpoint: str | None = None,
        adapter_uri: str | None = None,
        redactions: dict[str, int] | None = None,
        force: bool = False,
    ) -> bool:
        """Send a status patch unless one went out less than `interval_s` ago; True if sent."""
        now = self.clock()
        if not force and self._last is not None and now - self._last < self.interval_s:
            return False
        progress = {
            "step": step,
            "totalSteps": total_steps,
            "percent": int(100 * step / total_steps) if total_steps else 0,
            "epoch": _number(epoch, 3),
            "loss": _number(loss),
            "evalLoss": _number(eval_loss),
            "etaSeconds": None if eta_seconds is None else max(0, int(eta_seconds)),
            "tokensPerSecond": _number(tokens_per_second, 1),
        }
        status: dict[str, Any] = {"progress": {k: v for k, v in progress.items() if v is not None}}
        if checkpoint:
            status["checkpoint"] = checkpoint
        if adapter_uri:
            status["adapterUri"] = adapter_uri
        if redactions:
            status["redactions"] = dict(redactions)
        self._last = now
        ok = self.sink.send({"status": status})
        self.sent += 1
        return ok

    def report_evaluation(self, evaluation: dict[str, Any]) -> bool:
        """Send the eval gate's result (status.evaluation) now; True if delivered."""
        self._last = self.clock()
        ok = self.sink.send({"status": {"evaluation": evaluation}})
        self.sent += 1
        return ok
