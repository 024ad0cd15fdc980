"""http(s):// datasets, fetched so that a FineTuneJob cannot reach what its pod should not (SSRF).

Every connection — the first and each redirect's — resolves the host, refuses the whole fetch when
any address it resolves to is loopback, link-local (cloud metadata), private or otherwise internal
(bigmodel_contract.fetch_addresses), and then connects to one of the addresses it checked: a second
DNS answer (rebinding) is never consulted. TLS still verifies the certificate against the host name.
Proxies from the environment are not used (a proxy would resolve the name where it cannot be checked),
redirects go only to http(s) and at most MAX_REDIRECTS times, and the body is cut off at `max_bytes`.

`allow` lets a test reach a server on 127.0.0.1; it is a function argument only — nothing in the
trainer's config, its environment or a FineTuneJob can set it.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bigmodel_contract.fetch_addresses import UnsafeAddressError, literal_host_problem, refused_address
from bigmodel_contract.safe_paths import check_uri

MAX_REDIRECTS = 5
CHUNK_BYTES = 1 << 20
Resolver = Callable[[str, int], list[str]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DownloadTooLargeError(ValueError):
    """The body is larger than the dataset may be."""


def system_resolver(host: str, port: int) -> list[str]:
    """Every address `host` resolves to, in the resolver's order, without duplicates."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressGuard:
    """Resolves, checks and connects: the only way the opener below opens a socket."""

    def __init__(self, resolver: Resolver = system_resolver, allow: Sequence[Network] = ()) -> None:
        self.resolver = resolver
        self.allow = tuple(allow)
        self.connected: list[tuple[str, int]] = []

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host`, or UnsafeAddressError when any of them is refused."""
        problem = literal_host_problem(host)
        if problem and not self._allowed(host.strip("[]")):
            raise UnsafeAddressError(f"{host}: {problem}")
        addresses = self.resolver(host, port)
        if not addresses:
            raise UnsafeAddressError(f"{host} resolves to no address")
        for address in addresses:
            why = refused_address(address)
            if why and not self._allowed(address):
                raise UnsafeAddressError(f"{host} resolves to {address}, a {why} address: refused")
        return addresses

    def _allowed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.allow)

    def connect(
        self, address: tuple[str, int], timeout: Any = None, source_address: Any = None, **_: Any
    ) -> socket.socket:
        """http.client's `_create_connection`: connect to a checked address of the host."""
        host, port = address
        error: OSError | None = None
        for ip in self.checked_addresses(host, port):
            try:
                sock = socket.create_connection((ip, port), timeout, source_address)
            except OSError as exc:
                error = exc
                continue
            self.connected.append((ip, port))
            return sock
        raise error or OSError(f"cannot connect to {host}:{port}")


def _guarded(connection_class: type[http.client.HTTPConnection], guard: AddressGuard) -> Any:
    def make(host: str, **kwargs: Any) -> http.client.HTTPConnection:
        connection = connection_class(host, **kwargs)
        connection._create_connection = guard.connect  # type: ignore[attr-defined]
        return connection

    return make


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPConnection, self.guard), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__(context=ssl.create_default_context())
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_guarded(http.client.HTTPSConnection, self.guard), req, context=self._context)  # type: ignore[attr-defined]


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme not in {"http", "https"}:
            raise UnsafeAddressError(f"redirect to {newurl!r}: only http(s) locations are followed")
        check_uri(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def opener(guard: AddressGuard) -> urllib.request.OpenerDirector:
    """An opener that knows only guarded http(s), redirects and errors: no proxies, no file:, ftp:, data:."""
    director = urllib.request.OpenerDirector()
    for handler in (
        _HTTPHandler(guard),
        _HTTPSHandler(guard),
        _RedirectHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.UnknownHandler(),
    ):
        director.add_handler(handler)
    return director


def fetch_to_file(
    uri: str,
    target: Path,
    *,
    max_bytes: int,
    timeout: float = 60.0,
    resolver: Resolver = system_resolver,
    allow: Sequence[Network] = (),
) -> Path:
    """Download `uri` into `target`; UnsafeAddressError, DownloadTooLargeError or OSError otherwise."""
    check_uri(uri)
    if urlsplit(uri).scheme not in {"http", "https"}:
        raise UnsafeAddressError(f"{uri!r} is not an http(s) location")
    guard = AddressGuard(resolver, allow)
    request = urllib.request.Request(uri, headers={"User-Agent": "bigmodel-trainer"})  # noqa: S310 (scheme checked)
    with opener(guard).open(request, timeout=timeout) as response:
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise DownloadTooLargeError(f"{uri} is {int(declared):,} bytes; the dataset may have at most {max_bytes:,}")
        written = 0
        with open(target, "wb") as out:
            while chunk := response.read(CHUNK_BYTES):
                written += len(chunk)
                if written > max_bytes:
                    raise DownloadTooLargeError(f"{uri} is more than {max_bytes:,} bytes (dataset.maxFileBytes)")
                out.write(chunk)
    return target
