"""The trainer's http(s) dataset fetch refuses internal addresses (issue 21, SSRF from the trainer).

A real HTTP server on 127.0.0.1 serves the positive path and the redirects; it is reachable only
through the guard's explicit, test-only `allow` argument (loopback itself is refused in production).
Nothing here connects to a non-loopback address: other hosts go through injected resolvers, and
every socket the guard opens is recorded so the tests can prove no connection to a refused address
was even attempted.
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from bigmodel_contract.fetch_addresses import UnsafeAddressError
from bigmodel_training import http_fetch, sources
from bigmodel_training.config import DatasetSource
from bigmodel_training.errors import ConfigError, DatasetError

LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)
BODY = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes]]] = {}
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path.startswith("/hop/"):  # a chain of distinct redirects
            self.routes[self.path] = (302, {"Location": f"/hop/{int(self.path[5:]) + 1}"}, b"")
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for key, value in headers.items():
            if key != "X-Unsized":
                self.send_header(key, value)
        if "Content-Length" not in headers and "X-Unsized" not in headers:  # else: the body ends at close
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Handler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    _Handler.routes = {
        "/data.jsonl": (200, {}, BODY),
        "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/iam/"}, b""),
        "/to-private": (302, {"Location": "http://10.0.0.5:8265/api/jobs/"}, b""),
        "/to-name": (302, {"Location": "http://internal.example/secret"}, b""),
        "/to-decimal": (302, {"Location": "http://2852039166/latest/"}, b""),
        "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
        "/to-ftp": (302, {"Location": "ftp://127.0.0.1/x"}, b""),
        "/to-self": (302, {"Location": f"{base}/data.jsonl"}, b""),
        "/loop": (302, {"Location": f"{base}/loop"}, b""),
        "/big": (200, {"X-Unsized": "1"}, b"x" * 5000),
        "/big-declared": (200, {"Content-Length": "10000000000"}, b""),
    }
    yield base
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address the guard hands to socket.create_connection."""
    made: list[tuple[str, int]] = []
    real = socket.create_connection

    def record(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        made.append(address)
        assert address[0] == "127.0.0.1", f"the test tried to connect to {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(http_fetch.socket, "create_connection", record)
    return made


def _resolver(table: dict[str, list[str]]) -> http_fetch.Resolver:
    def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        return http_fetch.system_resolver(host, port) if host == "127.0.0.1" else []

    return resolve


def test_a_loopback_server_is_read_with_the_test_allowance(server: str, tmp_path: Path, connections: list) -> None:
    target = http_fetch.fetch_to_file(f"{server}/data.jsonl", tmp_path / "d.jsonl", max_bytes=10_000, allow=LOOPBACK)
    assert target.read_bytes() == BODY
    assert [ip for ip, _ in connections] == ["127.0.0.1"]


def test_loopback_is_refused_without_the_allowance(server: str, tmp_path: Path, connections: list) -> None:
    with pytest.raises(UnsafeAddressError, match="loopback"):
        http_fetch.fetch_to_file(f"{server}/data.jsonl", tmp_path / "d.jsonl", max_bytes=10_000)
    assert connections == [] and _Handler.seen == []


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/to-metadata", "169.254.169.254"),
        ("/to-private", "10.0.0.5"),
        ("/to-name", "internal.example resolves to 10.1.2.3"),
        ("/to-decimal", "link-local"),
    ],
)
def test_a_redirect_to_an_internal_address_is_refused_before_connecting(
    server: str, tmp_path: Path, connections: list, path: str, expected: str
) -> None:
    resolver = _resolver({"internal.example": ["10.1.2.3"]})
    with pytest.raises(UnsafeAddressError) as error:
        http_fetch.fetch_to_file(
            f"{server}{path}", tmp_path / "d.jsonl", max_bytes=10_000, resolver=resolver, allow=LOOPBACK
        )
    assert expected in str(error.value)
    assert [ip for ip, _ in connections] == ["127.0.0.1"], "only the first hop may have connected"
    assert not (tmp_path / "d.jsonl").exists()


def test_redirects_within_allowed_hosts_are_followed_and_bounded(
    server: str, tmp_path: Path, connections: list
) -> None:
    target = http_fetch.fetch_to_file(f"{server}/to-self", tmp_path / "d.jsonl", max_bytes=10_000, allow=LOOPBACK)
    assert target.read_bytes() == BODY
    with pytest.raises(OSError, match="redirect"):
        http_fetch.fetch_to_file(f"{server}/hop/0", tmp_path / "l.jsonl", max_bytes=10_000, allow=LOOPBACK)
    assert len([p for p in _Handler.seen if p.startswith("/hop/")]) == http_fetch.MAX_REDIRECTS + 1


def test_a_redirect_to_another_scheme_is_refused(server: str, tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError, match="not allowed"):  # urllib's own rule for file:
        http_fetch.fetch_to_file(f"{server}/to-file", tmp_path / "d.jsonl", max_bytes=10_000, allow=LOOPBACK)
    with pytest.raises(UnsafeAddressError, match="only http"):  # ours for ftp:, which urllib would follow
        http_fetch.fetch_to_file(f"{server}/to-ftp", tmp_path / "d.jsonl", max_bytes=10_000, allow=LOOPBACK)


def test_the_body_is_cut_off_at_the_cap(server: str, tmp_path: Path) -> None:
    with pytest.raises(http_fetch.DownloadTooLargeError, match="more than 4,096"):
        http_fetch.fetch_to_file(f"{server}/big", tmp_path / "b", max_bytes=4096, allow=LOOPBACK)
    with pytest.raises(http_fetch.DownloadTooLargeError, match="10,000,000,000 bytes"):
        http_fetch.fetch_to_file(f"{server}/big-declared", tmp_path / "c", max_bytes=4096, allow=LOOPBACK)


@pytest.mark.parametrize(
    "addresses",
    [
        ["93.184.216.34", "10.0.0.1"],  # one bad answer among good ones refuses the name
        ["169.254.169.254"],
        ["::ffff:169.254.169.254"],
        ["fd00:ec2::254"],
        ["100.100.100.200"],
        ["::1"],
        [],
    ],
)
def test_every_resolved_address_is_checked(addresses: list[str]) -> None:
    guard = http_fetch.AddressGuard(_resolver({"data.example": addresses}))
    with pytest.raises(UnsafeAddressError):
        guard.checked_addresses("data.example", 443)
    assert guard.connected == []


def test_a_public_name_passes_the_check_without_connecting() -> None:
    guard = http_fetch.AddressGuard(_resolver({"data.example": ["93.184.216.34", "2606:2800:220:1::1"]}))
    assert guard.checked_addresses("data.example", 443) == ["93.184.216.34", "2606:2800:220:1::1"]


def test_the_allowance_is_not_reachable_from_the_trainer_config(server: str, tmp_path: Path, connections: list) -> None:
    """resolve_dataset_file (what a FineTuneJob drives) never passes `allow`: loopback stays refused."""
    source = DatasetSource(uri=f"{server}/data.jsonl", format="chat")
    with pytest.raises(ConfigError, match="loopback"):
        sources.resolve_dataset_file(source, None, tmp_path)
    assert connections == [] and _Handler.seen == []
    assert "allow" not in DatasetSource.model_fields


def test_a_too_large_dataset_is_a_dataset_error(monkeypatch: pytest.MonkeyPatch, server: str, tmp_path: Path) -> None:
    real = http_fetch.fetch_to_file
    monkeypatch.setattr(http_fetch, "fetch_to_file", lambda *a, **k: real(*a, **k, allow=LOOPBACK))
    source = DatasetSource(uri=f"{server}/big", format="chat", max_file_bytes=1024)
    with pytest.raises(DatasetError, match="more than 1,024"):
        sources.resolve_dataset_file(source, None, tmp_path)
