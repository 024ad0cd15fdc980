"""All cluster I/O of the operator: a small async Kubernetes client over aiohttp.

Only reconcile and handlers use this module. It speaks to the apiserver address from the kubeconfig
(or the in-cluster service) and nothing else: never to a pod or Service address.
Writes are server-side apply with one field manager, merge patches of our own status, or a JSON patch of
the worker bounds of a RayCluster our RayService controls (reconcile/raycluster_sync.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import ssl
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import yaml

from bigmodel_operator.config import FIELD_MANAGER

log = logging.getLogger(__name__)
JsonPatch = list[dict[str, Any]]  # RFC 6902 operations (named here: `Kube.list` shadows the builtin in its body)


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str
    namespaced: bool = True


KINDS: dict[str, Kind] = {
    "BigModel": Kind("/apis/bigmodel.io/v1alpha1", "bigmodels"),
    "FineTuneJob": Kind("/apis/bigmodel.io/v1alpha1", "finetunejobs"),
    "RayService": Kind("/apis/ray.io/v1", "rayservices"),
    "RayCluster": Kind("/apis/ray.io/v1", "rayclusters"),
    "Ingress": Kind("/apis/networking.k8s.io/v1", "ingresses"),
    "NetworkPolicy": Kind("/apis/networking.k8s.io/v1", "networkpolicies"),
    "Job": Kind("/apis/batch/v1", "jobs"),
    "ConfigMap": Kind("/api/v1", "configmaps"),
    "Service": Kind("/api/v1", "services"),
    # Kueue (optional): read only, for why a queued training Job waits. v1beta1 is served by every release.
    "Workload": Kind("/apis/kueue.x-k8s.io/v1beta1", "workloads"),
    "Secret": Kind("/api/v1", "secrets"),
    "ServiceAccount": Kind("/api/v1", "serviceaccounts"),
    "Pod": Kind("/api/v1", "pods"),
    "Node": Kind("/api/v1", "nodes", namespaced=False),
    "Role": Kind("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}


class ApiError(Exception):
    """A non-2xx answer from the apiserver."""

    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        self.status = status
        self.body = body
        self.kind_name: str | None = None  # "Ingress llama", set by writes that know it
        try:
            self.message = json.loads(body).get("message", body)
        except (ValueError, AttributeError):
            self.message = body
        super().__init__(f"{method} {path}: HTTP {status}: {self.message}")


def path_of(kind: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    """The REST path of a kind, collection or object (and subresource)."""
    k = KINDS[kind]
    parts = [k.prefix]
    if k.namespaced and namespace:
        parts.append(f"namespaces/{quote(namespace)}")
    parts.append(k.plural)
    if name:
        parts.append(quote(name))
    if sub:
        parts.append(sub)
    return "/".join(parts)


@dataclass
class Credentials:
    """How to reach and authenticate to the apiserver."""

    server: str
    ssl_context: ssl.SSLContext | None
    token: str | None = None
    token_file: str | None = None

    def bearer(self) -> str | None:
        if self.token_file:
            with open(self.token_file) as handle:  # bound tokens rotate: read on each session use
                return handle.read().strip()
        return self.token


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """Credentials from a kubeconfig file (argument, or KUBECONFIG), else the in-cluster service account.

    A small parser on purpose: the `kubernetes` client library costs ~40 MiB of RSS and a second of
    start-up, and the operator needs none of it (exec credential plugins are not supported).
    """
    path = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
    if path is None and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        default = Path.home() / ".kube" / "config"
        path = str(default) if default.exists() else None
    if path is None:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        ctx = ssl.create_default_context(cafile=f"{SERVICE_ACCOUNT_DIR}/ca.crt")
        return Credentials(f"https://{host}:{port}", ctx, token_file=f"{SERVICE_ACCOUNT_DIR}/token")
    return _from_kubeconfig(Path(path))


def _from_kubeconfig(path: Path) -> Credentials:
    config = yaml.safe_load(path.read_text()) or {}
    context_name = config.get("current-context")
    context = next((c["context"] for c in config.get("contexts", []) if c["name"] == context_name), None)
    if context is None:
        raise ValueError(f"{path}: current-context {context_name!r} not found")
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    users = config.get("users", [])
    user: dict[str, Any] = next((u["user"] for u in users if u["name"] == context.get("user")), {}) or {}
    base = path.parent
    ctx: ssl.SSLContext | None = None
    server = str(cluster["server"]).rstrip("/")
    if server.startswith("https"):
        ctx = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif cluster.get("certificate-authority"):
            ctx.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        if cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = _material(user, "client-certificate", base)
        key = _material(user, "client-key", base)
        if cert and key:
            ctx.load_cert_chain(cert, key)
    token_file = str(base / user["tokenFile"]) if user.get("tokenFile") else None
    return Credentials(server, ctx, token=user.get("token"), token_file=token_file)


def _material(user: dict[str, Any], name: str, base: Path) -> str | None:
    """A path to the PEM file for `name`, writing inline `-data` to a private temporary file."""
    if user.get(name):
        return str(base / user[name])
    data = user.get(f"{name}-data")
    if not data:
        return None
    handle = tempfile.NamedTemporaryFile(prefix="bigmodel-", suffix=".pem", delete=False)  # noqa: SIM115
    with handle:
        os.chmod(handle.name, 0o600)
        handle.write(base64.b64decode(data))
    return handle.name


class Kube:
    """An async client for the handful of calls the operator makes. Counts its writes by verb."""

    def __init__(self, credentials: Credentials, *, timeout: float = 30.0, limit: int = 64) -> None:
        self.credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self.writes: Counter[str] = Counter()
        self.reads: Counter[str] = Counter()
        self.on_request: Callable[[str], None] | None = None  # told the method of every call (handlers.py)

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.credentials.ssl_context or False, limit=self._limit)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded body, None for 404 on GET/DELETE; raises ApiError otherwise."""
        session = await self._http()
        headers = {"Accept": "application/json"}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.credentials.server + path + (f"?{urlencode(params)}" if params else "")
        (self.reads if method == "GET" else self.writes)[method] += 1
        if self.on_request is not None:
            self.on_request(method)
        for attempt in range(4):
            async with session.request(method, url, data=data, headers=headers) as response:
                text = await response.text()
                if response.status == 404 and method in {"GET", "DELETE"}:
                    return None
                if response.status == 429 or (response.status >= 500 and attempt < 3):
                    await asyncio.sleep(float(response.headers.get("Retry-After", "0.2")) or 0.2)
                    continue
                if response.status >= 400:
                    raise ApiError(response.status, text, method, path)
                return json.loads(text) if text else {}
        raise ApiError(503, "apiserver kept answering 429/5xx", method, path)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path_of(kind, namespace, name))

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self.request("GET", path_of(kind, namespace), params=params)
        return list((result or {}).get("items") or [])

    async def apply(self, obj: dict[str, Any], *, if_absent: bool = False) -> dict[str, Any]:
        """Server-side apply `obj` under our one field manager (force: we own these fields).

        if_absent: create it, or raise ApiError 409 if an object of that name exists (and leave that one as it
        is), in one round trip instead of a GET and an apply: a POST under our field manager. The apiserver
        records a POST's fields as an Update, which a later apply could not remove (SSA's field ownership), so
        the first apply that changes such an object first turns that entry into an Apply
        (`reconcile.children.ownership_upgrade`). A create by apply (with a resourceVersion precondition no object
        has) would do the same in one step, but it costs the apiserver a read and a structured merge: 12.5 against
        10.3 ms for the tiny example's RayService on this machine, the longest step of a paced create (issue 21).
        """
        meta = obj["metadata"]
        try:
            if if_absent:
                collection = path_of(obj["kind"], meta.get("namespace"))
                result = await self.request("POST", collection, body=obj, params={"fieldManager": FIELD_MANAGER})
            else:
                path = path_of(obj["kind"], meta.get("namespace"), meta["name"])
                params = {"fieldManager": FIELD_MANAGER, "force": "true"}
                content_type = "application/apply-patch+yaml"
                result = await self.request("PATCH", path, body=obj, content_type=content_type, params=params)
        except ApiError as error:
            error.kind_name = f"{obj['kind']} {meta['name']}"
            raise
        return result or {}

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource."""
        path = path_of(kind, namespace, name, "status")
        result = await self.request("PATCH", path, body={"status": status}, content_type="application/merge-patch+json")
        return result or {}

    async def json_patch(self, kind: str, namespace: str, name: str, ops: JsonPatch) -> dict[str, Any]:
        """Apply RFC 6902 operations to an object (a failed `test` op makes the apiserver refuse all of them)."""
        path = path_of(kind, namespace, name)
        result = await self.request("PATCH", path, body=ops, content_type="application/json-patch+json")
        return result or {}

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        """Delete an object, only if it still has this uid (when given)."""
        body = {"preconditions": {"uid": uid}, "propagationPolicy": "Background"} if uid else None
        await self.request("DELETE", path_of(kind, namespace, name), body=body)


async def post_event(kube: Kube, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
    """Record a Kubernetes Event about one of our resources (best effort: never fails a reconcile)."""
    meta = involved["metadata"]
    from bigmodel_operator.conditions import now

    timestamp = now()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason[:128] or "Unknown",
        "message": message[:1024],
        "source": {"component": "bigmodel-operator"},
        "reportingComponent": "bigmodel.io/operator",
        "reportingInstance": "bigmodel-operator",
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
    }
    try:
        await kube.request("POST", f"/api/v1/namespaces/{quote(meta['namespace'])}/events", body=event)
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        log.info("could not record event %s on %s: %s", reason, meta["name"], error)
