"""Progress reports: the merge patch, throttling, and the HTTP request the API server receives."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_training.progress import FileSink, KubeConnection, KubeSink, ProgressReporter


class Recorder:
    def __init__(self) -> None:
        self.patches: list[dict[str, Any]] = []

    def send(self, patch: dict[str, Any]) -> bool:
        self.patches.append(patch)
        return True


def test_patch_body_is_camel_case_status() -> None:
    sink = Recorder()
    reporter = ProgressReporter(sink, interval_s=30)
    reporter.report(
        step=25, total_steps=100, epoch=0.5, loss=1.23456, eval_loss=None, eta_seconds=75.6,
        tokens_per_second=1234.56, checkpoint="pvc://out/run/checkpoints/step-00000020",
        adapter_uri=None, redactions={"EMAIL": 2},
    )  # fmt: skip
    assert sink.patches == [
        {
            "status": {
                "progress": {
                    "step": 25, "totalSteps": 100, "percent": 25, "epoch": 0.5, "loss": 1.2346,
                    "etaSeconds": 75, "tokensPerSecond": 1234.6,
                },
                "checkpoint": "pvc://out/run/checkpoints/step-00000020",
                "redactions": {"EMAIL": 2},
            }
        }
    ]  # fmt: skip


def test_reports_are_throttled_but_forced_ones_go_out() -> None:
    sink, now = Recorder(), [0.0]
    reporter = ProgressReporter(sink, interval_s=10, clock=lambda: now[0])
    for t in (0, 1, 5, 9.9, 10, 11, 25):
        now[0] = t
        reporter.report(step=int(t), total_steps=30, epoch=0.0)
    assert [p["status"]["progress"]["step"] for p in sink.patches] == [0, 10, 25]
    reporter.report(step=30, total_steps=30, epoch=1.0, adapter_uri="pvc://out/run", force=True)
    assert sink.patches[-1]["status"]["adapterUri"] == "pvc://out/run"


def test_nan_loss_is_left_out() -> None:
    sink = Recorder()
    ProgressReporter(sink, 0).report(step=1, total_steps=2, epoch=0.1, loss=float("nan"))
    assert "loss" not in sink.patches[0]["status"]["progress"]


def test_file_sink_merges(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "p.json")
    sink.send({"status": {"progress": {"step": 1}, "checkpoint": "a"}})
    sink.send({"status": {"progress": {"step": 2, "loss": 1.0}}})
    assert json.loads((tmp_path / "p.json").read_text()) == {
        "status": {"progress": {"step": 2, "loss": 1.0}, "checkpoint": "a"}
    }


class _Handler(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []  # noqa: RUF012 - shared by the test server
    status = 200

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Handler.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        self.send_response(_Handler.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[str]:
    _Handler.requests = []
    _Handler.status = 200
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _kubeconfig(path: Path, server: str, user: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
                "clusters": [{"name": "k", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_kube_sink_sends_a_merge_patch_with_the_token(api_server: str, tmp_path: Path) -> None:
    connection = KubeConnection.from_kubeconfig(_kubeconfig(tmp_path / "kc", api_server, {"token": "s3cr3t"}))
    patch = {"status": {"progress": {"step": 1}}}
    assert KubeSink("team-a", "my-job", connection).send(patch) is True
    [request] = _Handler.requests
    assert request["path"] == "/apis/bigmodel.io/v1alpha1/namespaces/team-a/finetunejobs/my-job/status"
    assert request["headers"]["Content-Type"] == "application/merge-patch+json"
    assert request["headers"]["Authorization"] == "Bearer s3cr3t"
    assert request["body"] == patch


def test_kubeconfig_from_environment_and_token_file(
    api_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.setenv("BIGMODEL_KUBECONFIG", str(_kubeconfig(tmp_path / "kc", api_server, {"tokenFile": "token"})))
    assert KubeSink("ns", "job").send({"status": {}}) is True
    assert _Handler.requests[0]["headers"]["Authorization"] == "Bearer from-file"


def test_failures_are_logged_not_raised(api_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _Handler.status = 403
    connection = KubeConnection.from_kubeconfig(_kubeconfig(tmp_path / "kc", api_server, {"token": "t"}))
    assert KubeSink("ns", "job", connection).send({"status": {}}) is False
    assert "403" in caplog.text
    refused = KubeConnection("http://127.0.0.1:9")  # nothing listens on the discard port
    assert KubeSink("ns", "job", refused).send({"status": {}}) is False


def test_in_cluster_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    (tmp_path / "token").write_text("sa-token\n")
    (tmp_path / "ca.crt").write_text(Path(certifi.where()).read_text())  # any valid PEM bundle
    connection = KubeConnection.in_cluster(tmp_path)
    assert connection.server == "https://10.0.0.1:6443"
    assert connection.token() == "sa-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(RuntimeError, match="not in a cluster"):
        KubeConnection.in_cluster(tmp_path)
