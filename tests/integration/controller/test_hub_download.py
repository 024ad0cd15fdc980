"""The Hub config.json download of the real operator (issue 21), against a Hub the test serves on 127.0.0.1:
an endless config.json is cut off at the 256 KiB cap while it streams (the operator never reads it whole) and
the BigModel says ModelConfigOutOfBounds, while a BigModel on a good repository beside it is planned.
(Parsing off the event loop and the cache's bounds: tests/unit/api_and_builders/test_hub_config.py.)
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from .conftest import GROUP, VERSION, OperatorProcess, condition, load_example, namespace_operator, or_none

LLAMA_8B = (
    Path(__file__).resolve().parents[2] / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json"
).read_bytes()
SHA = "0123456789abcdef0123456789abcdef01234567"
ENDLESS = 256 * 2**20  # what the endless config.json stops at if nobody hangs up


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The two Hub endpoints the operator calls: a revision's commit, and config.json at a commit."""

    sent: ClassVar[list[int]] = []  # bytes written per request for the endless config.json

    def do_GET(self) -> None:
        if self.path.startswith("/api/models/"):
            body = json.dumps({"sha": SHA}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/org/endless/"):
            self.send_response(200)  # no Content-Length: the body ends when the connection does
            self.end_headers()
            chunk = b" " * 65536
            FakeHub.sent.append(0)
            try:
                while FakeHub.sent[-1] < ENDLESS:
                    self.wfile.write(chunk)
                    FakeHub.sent[-1] += len(chunk)
            except OSError:
                pass  # the operator hung up
            self.close_connection = True
        elif self.path.startswith("/org/llama/"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(LLAMA_8B)))
            self.end_headers()
            self.wfile.write(LLAMA_8B)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    FakeHub.sent = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub_operator(operator_process: OperatorProcess, namespace: str, tmp_path: Path, hub: str) -> Iterator[None]:
    """An operator for this namespace that fetches config.json from the fake Hub (the session's is stopped)."""
    hub_settings = {"hub_endpoint": hub, "fetch_hub_config": True}
    with namespace_operator(operator_process, namespace, tmp_path, env={"BIGMODEL_OFFLINE": "0"}, **hub_settings):
        yield


def _bigmodel(name: str, repo: str) -> dict[str, Any]:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["metadata"] = {"name": name}
    body["spec"].pop("credentials", None)
    body["spec"].pop("expose", None)
    body["spec"]["model"] = {"uri": f"hf://org/{repo}"}
    return body


def test_an_endless_hub_config_is_cut_off_at_the_cap_and_a_good_one_beside_it_is_planned(
    hub_operator: None, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    for name, repo in (("endless", "endless"), ("llama", "llama")):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", _bigmodel(name, repo))

    def ready(name: str) -> Any:
        bm = or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "bigmodels", name)
        return bm if bm and condition(bm, "Ready") else None

    endless = wait_until(lambda: ready("endless"), timeout=90)
    cut = condition(endless, "Ready")
    assert cut["reason"] == "ModelConfigOutOfBounds", cut
    assert "more than 262,144 bytes" in cut["message"], cut["message"]
    # Each download hung up early (what the server wrote includes the kernel's socket buffers, a few MiB).
    assert FakeHub.sent and max(FakeHub.sent) < ENDLESS // 8, FakeHub.sent
    llama = wait_until(lambda: (bm := ready("llama")) and condition(bm, "Planned").get("status") == "True" and bm)
    assert llama["status"]["resolvedRevision"] == SHA
