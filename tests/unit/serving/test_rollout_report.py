"""Reporting automatic canary decisions to Kubernetes: the patch and Event, the stdlib client against a
local HTTP server, failures that never raise, and the canary actor's hook."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from bigmodel_serving import rollout_report
from bigmodel_serving.args import InvalidServeArgsError, parse_ingress_config
from bigmodel_serving.canary import CanaryActor
from bigmodel_serving.rollout_report import Connection, Decision, RolloutReporter

DECISION = Decision(
    route="bot",
    stable="bot.v1",
    candidate="bot.v2",
    decision="rollback",
    reason="candidate error rate 40.0% > stable 0.0% + 5.0% after 20 requests",
    time="2026-11-30T06:00:00Z",
)


class _Recorder(BaseHTTPRequestHandler):
    status = 200
    seen: ClassVar[list[dict[str, Any]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "type": self.headers.get("Content-Type"),
                "auth": self.headers.get("Authorization"),
                "body": body,
            }
        )
        answer = json.dumps({"metadata": {"uid": "uid-7"}} if self.command == "PATCH" else {}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_PATCH = _answer  # noqa: N815
    do_POST = _answer  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def apiserver() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Handler", (_Recorder,), {"seen": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_patch_touches_one_key_of_rollout_decisions() -> None:
    assert DECISION.patch() == {
        "status": {
            "rolloutDecisions": {
                "bot.v2": {
                    "route": "bot",
                    "stable": "bot.v1",
                    "decision": "rollback",
                    "reason": DECISION.reason,
                    "time": "2026-11-30T06:00:00Z",
                }
            }
        }
    }


def test_the_event_is_about_the_bigmodel_in_kubernetes_style() -> None:
    event = DECISION.event("ns", "tiny-cpu", "uid-7")
    assert event["involvedObject"] == {
        "apiVersion": "bigmodel.io/v1alpha1",
        "kind": "BigModel",
        "name": "tiny-cpu",
        "namespace": "ns",
        "uid": "uid-7",
    }
    assert (event["type"], event["reason"]) == ("Warning", "CanaryRolledBack")
    assert event["message"].startswith("Rolled back bot.v2 on route bot (stable bot.v1): candidate error rate 40.0%")
    promote = Decision("bot", None, "bot.v2", "promote", "200 candidate requests", DECISION.time)
    assert (promote.event("ns", "m", None)["type"], promote.event("ns", "m", None)["reason"]) == (
        "Normal",
        "CanaryPromoted",
    )
    assert "stable the base model" in promote.event("ns", "m", None)["message"]


def test_verdicts_map_to_reported_decisions() -> None:
    reporter = RolloutReporter("ns", "m", wall=lambda: 0.0)
    made = reporter.decision("bot", "bot.v1", "bot.v2", "promoted", "ok")
    assert made is not None and (made.decision, made.time) == ("promote", "1970-01-01T00:00:00Z")
    assert reporter.decision("bot", "bot.v1", "bot.v2", "pinned", "by hand") is None


def _kubeconfig(tmp_path: Path, server: str, token: str = "t0ken") -> Path:
    path = tmp_path / "kubeconfig"
    doc = {
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_report_patches_the_status_then_posts_the_event(
    apiserver: tuple[str, type[_Recorder]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = apiserver
    monkeypatch.setenv("BIGMODEL_KUBECONFIG", str(_kubeconfig(tmp_path, url)))
    assert RolloutReporter("team-a", "tiny-cpu").report(DECISION)
    patch, event = handler.seen
    assert patch["method"] == "PATCH"
    assert patch["path"] == "/apis/bigmodel.io/v1alpha1/namespaces/team-a/bigmodels/tiny-cpu/status"
    assert patch["type"] == "application/merge-patch+json" and patch["auth"] == "Bearer t0ken"
    assert patch["body"] == DECISION.patch()
    assert (event["method"], event["path"]) == ("POST", "/api/v1/namespaces/team-a/events")
    assert event["body"]["involvedObject"]["uid"] == "uid-7"


def test_a_refused_or_unreachable_report_returns_false_and_never_raises(
    apiserver: tuple[str, type[_Recorder]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, handler = apiserver
    handler.status = 403
    refused = RolloutReporter("ns", "m", Connection.from_kubeconfig(_kubeconfig(tmp_path, url)))
    assert refused.report(DECISION) is False
    assert len(handler.seen) == 1  # no Event for a decision that did not land
    assert "HTTP 403" in caplog.text
    nowhere = RolloutReporter("ns", "m", Connection("http://127.0.0.1:9"))
    assert nowhere.report(DECISION) is False


def test_no_kubeconfig_and_no_cluster_is_a_logged_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGMODEL_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert RolloutReporter("ns", "m").report(DECISION) is False


def test_the_ingress_config_names_the_bigmodel() -> None:
    auth = {"mode": "none"}
    config = parse_ingress_config({"auth": auth, "rollout_report": {"namespace": "team-a", "bigmodel": "tiny-cpu"}})
    assert config.rollout_report is not None and config.rollout_report.bigmodel == "tiny-cpu"
    assert parse_ingress_config({"auth": auth}).rollout_report is None
    with pytest.raises(InvalidServeArgsError, match=r"rollout_report\.namespace"):
        parse_ingress_config({"auth": auth, "rollout_report": {"namespace": "Not A Name", "bigmodel": "m"}})


def test_the_canary_actor_reports_its_automatic_verdict_once(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str, Decision]] = []

    def fake_report(self: RolloutReporter, decision: Decision) -> bool:
        sent.append((self.namespace, self.bigmodel, decision))
        return len(sent) > 1  # the first delivery fails: it is kept and sent again

    monkeypatch.setattr(RolloutReporter, "report", fake_report)
    monkeypatch.setattr("bigmodel_serving.canary.REPORT_RETRY_S", 0.0)
    route = {"name": "bot", "stable": "bot.v1", "candidate": "bot.v2", "weight": 0.5, "min_requests": 4}
    target = {"namespace": "team-a", "bigmodel": "tiny-cpu"}
    failing = [["bot", "bot.v1", "bot.v2", "candidate", True, None]] * 20
    failing += [["bot", "bot.v1", "bot.v2", "stable", False, 0.1]] * 20

    async def scenario() -> None:
        actor = CanaryActor("app", "tiny")
        snapshot = await actor.sync([route], failing, target)
        assert snapshot["states"][0]["decision"] == "rolled_back"
        assert actor._reporting is not None
        await actor._reporting
        assert len(actor.unreported) == 1
        await actor.sync([route], [], target)  # the retry
        assert actor._reporting is not None
        await actor._reporting
        assert actor.unreported == []
        await actor.sync([route], failing, target)  # more requests: the verdict holds, nothing new to say
        assert actor._reporting is None or actor._reporting.done()

    asyncio.run(scenario())
    assert len(sent) == 2
    namespace, bigmodel, decision = sent[-1]
    assert (namespace, bigmodel, decision.candidate, decision.decision) == ("team-a", "tiny-cpu", "bot.v2", "rollback")
    assert "error rate 100.0%" in decision.reason


def test_without_a_target_the_actor_reports_nothing() -> None:
    async def scenario() -> CanaryActor:
        actor = CanaryActor("app", "tiny")
        route = {"name": "bot", "stable": "bot.v1", "candidate": "bot.v2", "weight": 0.5, "min_requests": 1}
        await actor.sync([route], [["bot", "bot.v1", "bot.v2", "candidate", True, None]])
        return actor

    actor = asyncio.run(scenario())
    assert actor.reporter is None and actor.unreported == []
    assert rollout_report.reported_decision("rolled_back") == "rollback"
