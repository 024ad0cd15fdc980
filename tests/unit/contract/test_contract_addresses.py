"""bigmodel_contract.fetch_addresses: which addresses an http(s) dataset may come from (issue 21), and
the admission rule (api/base.py PRIVATE_HTTP_HOST_RE2) that refuses the literal ones without DNS."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from bigmodel_contract.fetch_addresses import literal_host_problem, refused_address
from bigmodel_operator.api.base import PRIVATE_HTTP_HOST_RE2

REFUSED = {
    "127.0.0.1": "loopback",
    "127.8.9.10": "loopback",
    "::1": "loopback",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "fe80::1%eth0": "link-local",
    "10.0.0.5": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "100.100.100.200": "shared",
    "fd00:ec2::254": "unique local",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "224.0.0.1": "multicast",
    "ff02::1": "multicast",
    "255.255.255.255": "reserved",
    "::ffff:169.254.169.254": "embedded",
    "64:ff9b::a9fe:a9fe": "embedded",
    "2002:a9fe:a9fe::1": "embedded",
    "::10.0.0.1": "embedded",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.15.0.1", "172.32.0.1", "100.63.0.1", "2606:4700::1111"]


@pytest.mark.parametrize(("address", "why"), REFUSED.items())
def test_internal_addresses_are_refused(address: str, why: str) -> None:
    assert why in (refused_address(address) or ""), address


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refused_address(address) is None


HOSTILE_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.169.254:80/",
    "https://LOCALHOST/x",
    "http://localhost./x",
    "http://app.localhost/x",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://user:pw@10.0.0.1/x",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://127.1/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://[::1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/latest/",
    "http://[fe80::1%25eth0]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://192.168.0.10:8265/api/jobs/",
    "http://172.20.1.1/",
]
PUBLIC_URLS = [
    "https://example.com/data.jsonl",
    "https://8.8.8.8/x",
    "http://172.15.0.1/",
    "https://deadbeef.cafe/x",
    "https://10.example.com/x",
    "https://huggingface.co/datasets/org/name/resolve/main/train.jsonl",
    "https://[2606:4700::1111]/x",
]


@pytest.mark.parametrize("url", HOSTILE_URLS)
def test_literal_internal_hosts_are_refused_by_the_operator_and_by_cel(url: str) -> None:
    assert literal_host_problem(urlsplit(url).hostname), url
    assert re.search(PRIVATE_HTTP_HOST_RE2, url), f"the CEL rule misses {url}"


@pytest.mark.parametrize("url", PUBLIC_URLS)
def test_public_hosts_pass_both(url: str) -> None:
    assert literal_host_problem(urlsplit(url).hostname) is None, url
    assert not re.search(PRIVATE_HTTP_HOST_RE2, url), url
