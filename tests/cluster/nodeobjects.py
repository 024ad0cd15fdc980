"""The e2e node's cluster add-ons as plain dicts: CoreDNS, a hostPath storage pool and the KubeRay operator.

Pure functions (no I/O); tests/cluster/node.py applies them with server-side apply.
"""

from __future__ import annotations

from typing import Any

import yaml

Obj = dict[str, Any]
STORAGE_CLASS = "e2e-local"


def _meta(name: str, namespace: str | None = None, **labels: str) -> Obj:
    meta: Obj = {"name": name, "labels": {"app.kubernetes.io/part-of": "bigmodel-e2e-node", **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _restricted(user: int = 65532) -> tuple[Obj, Obj]:
    """(pod, container) security contexts that pass the restricted Pod Security Standard."""
    pod = {"runAsNonRoot": True, "runAsUser": user, "runAsGroup": user, "seccompProfile": {"type": "RuntimeDefault"}}
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True}
    return pod, container


def _deployment(name: str, namespace: str, sa: str, container: Obj, volumes: list[Obj] | None = None) -> Obj:
    labels = {"app.kubernetes.io/name": name}
    pod_sc, _ = _restricted()
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, **labels),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": sa,
                    "securityContext": pod_sc,
                    "containers": [container],
                    "volumes": volumes or [],
                    "terminationGracePeriodSeconds": 5,
                },
            },
        },
    }


def _cluster_rbac(name: str, namespace: str, rules: list[Obj]) -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": _meta(name), "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": _meta(name),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
    ]


# No `forward`: the node's network namespace has no route out, so only cluster names resolve.
COREFILE = """.:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 30
    loop
    loadbalance
}
"""


def coredns(image: str, cluster_ip: str) -> list[Obj]:
    ns = "kube-system"
    rules = [
        {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]
    _, sc = _restricted()
    container = {
        "name": "coredns",
        "image": image,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"containerPort": 1053, "protocol": "UDP", "name": "dns"},
            {"containerPort": 1053, "name": "dns-tcp"},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": sc,
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
    }
    deployment = _deployment(
        "coredns", ns, "coredns", container, [{"name": "config", "configMap": {"name": "coredns"}}]
    )
    deployment["spec"]["template"]["spec"]["dnsPolicy"] = "Default"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("kube-dns", ns, **{"k8s-app": "kube-dns"}),
        "spec": {
            "clusterIP": cluster_ip,
            "selector": {"app.kubernetes.io/name": "coredns"},
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 1053},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 1053},
            ],
        },
    }
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("coredns", ns), "data": {"Corefile": COREFILE}}
    return [*_cluster_rbac("coredns", ns, rules), config, deployment, service]


def storage_class() -> Obj:
    """The default class: a pool of pre-made hostPath volumes (no provisioner: the PV controller binds)."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {**_meta(STORAGE_CLASS), "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    }


def host_volume(name: str, path: str, size: str = "20Gi") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": _meta(name),
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce", "ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": path, "type": "Directory"},
        },
    }


def kuberay(image: str, role_yaml: str, namespace: str = "kuberay-system") -> list[Obj]:
    """KubeRay's operator from its own RBAC role (config/rbac/role.yaml of the module), leader election off."""
    role = yaml.safe_load(role_yaml)
    _, sc = _restricted()
    container = {
        "name": "kuberay-operator",
        "image": image,
        "imagePullPolicy": "Never",
        "args": ["--enable-leader-election=false", "--health-probe-bind-address=:8082"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8082}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": sc,
    }
    namespace_obj = {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(namespace)}
    deployment = _deployment("kuberay-operator", namespace, "kuberay-operator", container)
    return [namespace_obj, *_cluster_rbac("kuberay-operator", namespace, role["rules"]), deployment]
