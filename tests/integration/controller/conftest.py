"""The real operator (`bigmodel operator`) as a subprocess against the test control plane."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
GROUP, VERSION = "bigmodel.io", "v1alpha1"


class OperatorProcess:
    """A running `bigmodel operator`; restartable (the restart test needs that)."""

    def __init__(
        self,
        kubeconfig: Path,
        log_dir: Path,
        config_file: Path,
        extra_args: tuple[str, ...] = (),
        log_name: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / (log_name or "operator.log")
        self.config_file = config_file
        self.extra_args = extra_args
        self.env = env or {}  # e.g. BIGMODEL_OFFLINE="0": a test that serves its own Hub
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "BIGMODEL_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        env.update(self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bigmodel_operator.cli",
                "operator",
                "--config",
                str(self.config_file),
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited at once; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator_process(kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    log_dir = REPO / ".cluster" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    config_file = tmp_path_factory.mktemp("operator") / "config.yaml"
    config_file.write_text(yaml.safe_dump({"resync_seconds": 3, "images": {"vllm": "example.com/vllm:test"}}))
    if os.environ.get("BIGMODEL_OPERATOR_AS") == "chart":  # the Helm chart's ServiceAccount instead of admin
        sys.path.insert(0, str(REPO / "tests" / "cluster"))
        import chartidentity

        kubeconfig = chartidentity.operator_kubeconfig(kubeconfig, config_file.parent)
        log_dir = chartidentity.log_dir()  # its own log: a 403 there names a permission the chart lacks
    op = OperatorProcess(kubeconfig, log_dir, config_file)
    op.start()
    yield op
    op.stop()


@contextmanager
def namespace_operator(
    session: OperatorProcess, namespace: str, config_dir: Path, env: dict[str, str] | None = None, **settings: Any
) -> Iterator[OperatorProcess]:
    """An operator for `namespace` only, with the session operator's settings and `settings` over them (in
    config_dir/operator.yaml); the session's operator is stopped meanwhile, so that only this one acts."""
    config = config_dir / "operator.yaml"
    config.write_text(yaml.safe_dump(yaml.safe_load(session.config_file.read_text()) | settings))
    own = OperatorProcess(
        session.kubeconfig,
        session.log_path.parent,
        config,
        extra_args=("--namespace", namespace),
        log_name=f"operator-{namespace}.log",
        env=env,
    )
    session.stop()
    own.start()
    try:
        yield own
    finally:
        own.stop()
        session.start()


@pytest.fixture
def custom(api_client: Any) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture
def get_bigmodel(custom: Any, namespace: str) -> Callable[[str], dict[str, Any]]:
    def get(name: str) -> dict[str, Any]:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", name)
        return obj

    return get


def or_none(read: Callable[..., Any], *args: Any) -> Any:
    """read(*args), or None when the object does not exist (404)."""
    from kubernetes.client.rest import ApiException

    try:
        return read(*args)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return dict(cond)
    return {}


def load_example(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((REPO / "docs" / "examples" / name).read_text())
    return body


@contextmanager
def writes_refused(kubectl: Callable[..., Any], namespace: str, resource: str, message: str) -> Iterator[str]:
    """A ValidatingAdmissionPolicy (what Gatekeeper or Kyverno would be) refusing every create or update of
    `resource` (networking.k8s.io) in `namespace` while the block runs; yields the message it refuses with."""
    policy = f"bigmodel-test-deny-{resource}-{namespace}"
    rules = [
        {
            "apiGroups": ["networking.k8s.io"],
            "apiVersions": ["v1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": [resource],
        }
    ]
    match = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    manifests = [
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": policy},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {"resourceRules": rules},
                "validations": [{"expression": "false", "message": message}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": policy},
            "spec": {"policyName": policy, "validationActions": ["Deny"], "matchResources": match},
        },
    ]
    text = yaml.safe_dump_all(manifests)
    kubectl("apply", "-f", "-", input=text)
    try:
        time.sleep(2)  # the apiserver type-checks a new policy before enforcing it
        yield message
    finally:
        kubectl("delete", "-f", "-", "--wait=false", input=text, check=False)


def ingresses_refused(kubectl: Callable[..., Any], namespace: str) -> AbstractContextManager[str]:
    """`writes_refused` for Ingresses."""
    return writes_refused(kubectl, namespace, "ingresses", "Ingresses are not allowed in this namespace")
