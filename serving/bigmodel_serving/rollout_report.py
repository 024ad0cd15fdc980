"""Automatic canary decisions from the ingress into its BigModel's status, stdlib only.

When the canary actor promotes or rolls back a candidate on its own (canary.py `judge`), it tells
Kubernetes, so the operator can make the decision durable (status.adapters, the rendered routes, the
FineTuneJob's Promoted condition) and a restart of the ingress does not canary the version again:

    PATCH /apis/bigmodel.io/v1alpha1/namespaces/{ns}/bigmodels/{name}/status
    Content-Type: application/merge-patch+json
    {"status": {"rolloutDecisions": {"<candidate engine name>": {"route", "stable", "decision", "reason", "time"}}}}

    POST /api/v1/namespaces/{ns}/events   (CanaryPromoted / CanaryRolledBack on the BigModel)

A merge patch of a map only touches its own key, so decisions never overwrite each other and the
operator (which merge-patches the other status fields, never this one) never overwrites them.

Credentials: `BIGMODEL_KUBECONFIG` (a kubeconfig with a token or client certificate; tests and local
runs), else the pod's service account. The operator binds the Ray pods' ServiceAccount to a Role that
allows only `patch` on this BigModel's status and `create` on events. A failed report is logged and
never touches a request: the actor calls it off its event loop, after the decision is in force.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

logger = logging.getLogger("ray.serve")

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
GROUP_VERSION = "bigmodel.io/v1alpha1"
TIMEOUT_S = 10.0
COMPONENT = "bigmodel-ingress"

ReportedDecision = Literal["promote", "rollback"]
_FROM_VERDICT: dict[str, ReportedDecision] = {"promoted": "promote", "rolled_back": "rollback"}


def reported_decision(verdict: str) -> ReportedDecision | None:
    """The canary verdict (`promoted` / `rolled_back`) as written to status; None for anything else."""
    return _FROM_VERDICT.get(verdict)


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Decision:
    """One automatic decision about a candidate version of a route."""

    route: str
    stable: str | None  # engine adapter name, None: the base model
    candidate: str  # engine adapter name, `<adapter>.<version>`
    decision: ReportedDecision
    reason: str
    time: str

    def patch(self) -> dict[str, Any]:
        """The status merge patch: one key of status.rolloutDecisions."""
        entry = {
            "route": self.route,
            "stable": self.stable,
            "decision": self.decision,
            "reason": self.reason[:1000],
            "time": self.time,
        }
        return {"status": {"rolloutDecisions": {self.candidate: entry}}}

    def event(self, namespace: str, bigmodel: str, uid: str | None) -> dict[str, Any]:
        """A core/v1 Event about the BigModel, in Kubernetes message style."""
        promote = self.decision == "promote"
        verb = "Promoted" if promote else "Rolled back"
        against = self.stable or "the base model"
        involved = {"apiVersion": GROUP_VERSION, "kind": "BigModel", "name": bigmodel, "namespace": namespace}
        if uid:
            involved["uid"] = uid  # kubectl describe finds Events by uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{bigmodel}.", "namespace": namespace},
            "involvedObject": involved,
            "type": "Normal" if promote else "Warning",
            "reason": "CanaryPromoted" if promote else "CanaryRolledBack",
            "message": f"{verb} {self.candidate} on route {self.route} (stable {against}): {self.reason}"[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": f"bigmodel.io/{COMPONENT}",
            "reportingInstance": COMPONENT,
            "firstTimestamp": self.time,
            "lastTimestamp": self.time,
            "count": 1,
        }


# --------------------------------------------------------------------------------------------
# reaching the API server
# --------------------------------------------------------------------------------------------


@dataclass
class Connection:
    """Base URL, TLS context and bearer token source of the API server."""

    server: str
    ssl_context: ssl.SSLContext | None = None
    token: Callable[[], str | None] = field(default=lambda: None)

    @classmethod
    def from_environment(cls) -> Connection:
        """BIGMODEL_KUBECONFIG when set, else the pod's service account."""
        path = os.environ.get("BIGMODEL_KUBECONFIG")
        return cls.from_kubeconfig(Path(path)) if path else cls.in_cluster()

    @classmethod
    def in_cluster(cls, sa_dir: Path = SA_DIR) -> Connection:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        if not host:
            raise RuntimeError("no BIGMODEL_KUBECONFIG and not in a cluster (KUBERNETES_SERVICE_HOST unset)")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        host = f"[{host}]" if ":" in host else host
        token_file = sa_dir / "token"  # projected tokens rotate: read it for each request
        context = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
        return cls(f"https://{host}:{port}", context, lambda: token_file.read_text().strip())

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Connection:
        """The current context: token, tokenFile or client certificate."""
        import yaml  # Ray Serve's own dependency

        doc = yaml.safe_load(path.read_text())
        context = _named(doc.get("contexts"), doc["current-context"], "context")
        cluster = _named(doc.get("clusters"), context["cluster"], "cluster")
        user = _named(doc.get("users"), context.get("user", ""), "user") if context.get("user") else {}
        server = str(cluster["server"]).rstrip("/")
        tls = None
        if server.startswith("https://"):
            tls = ssl.create_default_context()
            if cluster.get("insecure-skip-tls-verify"):
                tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            elif "certificate-authority-data" in cluster:
                tls.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
            elif "certificate-authority" in cluster:
                tls.load_verify_locations(cafile=_beside(path, cluster["certificate-authority"]))
            _client_certificate(tls, path, user)
        if "token" in user:
            value = str(user["token"])
            return cls(server, tls, lambda: value)
        if "tokenFile" in user:
            token_path = Path(_beside(path, user["tokenFile"]))
            return cls(server, tls, lambda: token_path.read_text().strip())
        return cls(server, tls)


def _named(items: list[dict[str, Any]] | None, name: str, key: str) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return dict(item.get(key) or {})
    raise ValueError(f"kubeconfig has no {key} named {name!r}")


def _beside(kubeconfig: Path, name: str) -> str:
    return name if os.path.isabs(name) else str(kubeconfig.parent / name)


def _client_certificate(tls: ssl.SSLContext, kubeconfig: Path, user: dict[str, Any]) -> None:
    if "client-certificate-data" in user:
        with tempfile.TemporaryDirectory() as scratch:  # ssl loads PEMs from files only
            cert, key = Path(scratch) / "c.pem", Path(scratch) / "k.pem"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            key.touch(mode=0o600)
            key.write_bytes(base64.b64decode(user["client-key-data"]))
            tls.load_cert_chain(str(cert), str(key))
    elif "client-certificate" in user:
        tls.load_cert_chain(_beside(kubeconfig, user["client-certificate"]), _beside(kubeconfig, user["client-key"]))


class ReportError(Exception):
    """The API server refused or could not be reached."""


def _call(connection: Connection, method: str, path: str, body: dict[str, Any], content_type: str) -> dict[str, Any]:
    url = urlsplit(connection.server)
    conn: http.client.HTTPConnection
    if url.scheme == "https":
        conn = http.client.HTTPSConnection(
            url.hostname or "", url.port or 443, timeout=TIMEOUT_S, context=connection.ssl_context
        )
    else:
        conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=TIMEOUT_S)
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    if token := connection.token():
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, url.path.rstrip("/") + path, body=json.dumps(body), headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    if response.status >= 300:
        raise ReportError(f"{method} {path}: HTTP {response.status}: {raw[:300].decode('utf-8', 'replace')}")
    try:
        answer = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


# --------------------------------------------------------------------------------------------
# the reporter
# --------------------------------------------------------------------------------------------


class RolloutReporter:
    """Reports decisions about one BigModel's routes: status merge patch, then an Event."""

    def __init__(
        self,
        namespace: str,
        bigmodel: str,
        connection: Connection | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.namespace = namespace
        self.bigmodel = bigmodel
        self._connection = connection
        self.wall = wall
        self.status_path = f"/apis/{GROUP_VERSION}/namespaces/{quote(namespace)}/bigmodels/{quote(bigmodel)}/status"
        self.events_path = f"/api/v1/namespaces/{quote(namespace)}/events"

    def decision(self, route: str, stable: str | None, candidate: str, verdict: str, reason: str) -> Decision | None:
        """The `Decision` for a canary verdict, stamped now; None when the verdict is not reported."""
        decided = reported_decision(verdict)
        if decided is None:
            return None
        return Decision(route, stable, candidate, decided, reason, rfc3339(self.wall()))

    def report(self, decision: Decision) -> bool:
        """Send the decision; True when the status patch landed. Logs and returns False on any failure."""
        where = f"BigModel {self.namespace}/{self.bigmodel}"
        try:
            connection = self._connection or Connection.from_environment()
            self._connection = connection
            patched = _call(connection, "PATCH", self.status_path, decision.patch(), "application/merge-patch+json")
        except Exception as error:
            logger.warning(
                "bigmodel: could not report %s of %s to %s: %s", decision.decision, decision.candidate, where, error
            )
            return False
        uid = (patched.get("metadata") or {}).get("uid")
        try:
            event = decision.event(self.namespace, self.bigmodel, uid)
            _call(connection, "POST", self.events_path, event, "application/json")
        except Exception as error:  # the status carries the decision; the Event is for people
            logger.warning("bigmodel: could not record the Event for %s on %s: %s", decision.candidate, where, error)
        logger.info("bigmodel: reported %s of %s to %s", decision.decision, decision.candidate, where)
        return True
