"""Addresses a workload must never fetch a user-given http(s):// location from.

A FineTuneJob's `dataset.uri` is fetched by the trainer with the pod's network identity: without a
rule, `http://169.254.169.254/latest/meta-data/iam/security-credentials/` hands the node's cloud
credentials to whoever may create a FineTuneJob, and `http://10.0.0.7:8265/` reaches a Ray dashboard
inside the cluster. Refused: loopback, link-local (every cloud's metadata endpoint), private and
shared (CGNAT) ranges, multicast, reserved and unspecified addresses, and IPv6 forms that embed one
of those (IPv4-mapped, NAT64, 6to4, Teredo, IPv4-compatible).

`refused_address` classifies one IP; the trainer calls it on every address a name resolves to, on
every connection (redirects included), and connects only to an address it checked.
`literal_host_problem` is the part that needs no DNS — IP literals in any notation `inet_aton`
accepts (`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`, `127.1`) and well-known internal names —
which the operator applies at admission time.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_net = ipaddress.ip_network
REFUSED_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified ('this network')"),
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "shared (carrier-grade NAT, used for cloud metadata by some providers)"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local (cloud metadata)"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "IETF protocol assignment"),
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("::/128"), "unspecified"),
    (_net("::1/128"), "loopback"),
    (_net("100::/64"), "discard-only"),
    (_net("fc00::/7"), "unique local (private; AWS metadata is fd00:ec2::254)"),
    (_net("fe80::/10"), "link-local (cloud metadata)"),
    (_net("fec0::/10"), "site-local"),
    (_net("ff00::/8"), "multicast"),
)
INTERNAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)
"""Names that mean "this machine" or a cloud's metadata service wherever they resolve."""
_NAT64 = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"))
_IPV4_COMPATIBLE = _net("::/96")


class UnsafeAddressError(ValueError):
    """A fetch that would reach an address workloads must not reach; the message names host and range."""


def _embedded_v4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour) if v4 is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64) or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def refused_address(address: str | IPAddress) -> str | None:
    """Why a workload must not connect to `address` ("link-local (cloud metadata)", ...), or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    for network, why in REFUSED_NETWORKS:
        if ip.version == network.version and ip in network:
            return why
    if isinstance(ip, ipaddress.IPv6Address):
        for v4 in _embedded_v4(ip):
            inner = refused_address(v4)
            if inner:
                return f"{inner}, embedded in {ip}"
    return None


def literal_ip(host: str) -> IPAddress | None:
    """The address a host literal denotes in any notation the C resolver accepts, or None for a name."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    try:  # 127.1, 2852039166, 0xa9fea9fe, 0251.0376.0251.0376: all legal to inet_aton and to curl
        return ipaddress.IPv4Address(socket.inet_aton(bare))
    except OSError:
        return None


def literal_host_problem(host: str | None) -> str | None:
    """Why an http(s):// location with this host is refused without resolving it, or None."""
    if not host:
        return "has no host"
    name = host.lower().rstrip(".")
    if name in INTERNAL_NAMES or name.endswith(".localhost"):
        return f"host {host!r} is this machine or a cloud metadata service"
    ip = literal_ip(name)
    if ip is not None:
        why = refused_address(ip)
        if why:
            return f"host {host!r} is in a refused range: {why}"
    return None
