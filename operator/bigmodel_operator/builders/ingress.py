"""Build the Ingress in front of KubeRay's Serve Service: only the OpenAI paths and health.

`spec.expose.ingress.path` needs no rewrite annotation: the Serve application is mounted at that path
(`route_prefix`), so `<path>/v1/models` reaches Serve unchanged and the app sees `/v1/models`.
"""

from __future__ import annotations

from typing import Any

from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.serve_args import route_prefix
from bigmodel_operator.config import OperatorConfig

EXPOSED_PATHS = ("/v1", "/health")


def build_ingress(body: dict[str, Any], spec: BigModelSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """The desired Ingress, or None when spec.expose.ingress is not set."""
    ingress = spec.expose.ingress if spec.expose else None
    if ingress is None:
        return None
    name = body["metadata"]["name"]
    prefix = route_prefix(spec).rstrip("/")
    backend = {"service": {"name": naming.serve_service_name(name), "port": {"number": config.serve_port}}}
    rule: dict[str, Any] = {
        "http": {"paths": [{"path": f"{prefix}{p}", "pathType": "Prefix", "backend": backend} for p in EXPOSED_PATHS]}
    }
    if ingress.host:
        rule["host"] = ingress.host
    spec_out: dict[str, Any] = {"rules": [rule]}
    if ingress.class_name:
        spec_out["ingressClassName"] = ingress.class_name
    if ingress.tls_secret_name and ingress.host:
        spec_out["tls"] = [{"hosts": [ingress.host], "secretName": ingress.tls_secret_name}]
    desired: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": naming.ingress_name(name),
            "namespace": body["metadata"]["namespace"],
            "labels": naming.labels(naming.LABEL_BIGMODEL, name, "ingress"),
            "annotations": dict(ingress.annotations or {}),
            "ownerReferences": [naming.owner_reference(body)],
        },
        "spec": spec_out,
    }
    desired["metadata"]["annotations"][naming.ANNOTATION_SPEC_HASH] = naming.spec_hash(desired)
    return desired


def ingress_url(spec: BigModelSpec) -> str | None:
    """The public base URL of the OpenAI API when an Ingress host is set."""
    ingress = spec.expose.ingress if spec.expose else None
    if not ingress or not ingress.host:
        return None
    scheme = "https" if ingress.tls_secret_name else "http"
    return f"{scheme}://{ingress.host}{route_prefix(spec).rstrip('/')}/v1"
