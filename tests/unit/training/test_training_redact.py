"""PII redaction on a labelled set: every type is found and replaced, and look-alikes are left alone."""

from __future__ import annotations

import pytest

from bigmodel_training.redact import iban_ok, luhn_ok, redact_text

# (text, PII value inside it, type). Synthetic values only: test card numbers, example domains,
# documentation IP ranges, published checksum examples.
POSITIVES = [
    ("write to jane.doe+news@example.org today", "jane.doe+news@example.org", "EMAIL"),
    ("contact: ops@mail.example.co.uk.", "ops@mail.example.co.uk", "EMAIL"),
    ("call +1 415 555 2671 now", "+1 415 555 2671", "PHONE"),
    ("call (415) 555-2671 now", "(415) 555-2671", "PHONE"),
    ("tel 415.555.2671", "415.555.2671", "PHONE"),
    ("Tel.: +44 20 7946 0958", "+44 20 7946 0958", "PHONE"),
    ("ring 030 1234 5678 please", "030 1234 5678", "PHONE"),
    ("+49-30-901820 is the office", "+49-30-901820", "PHONE"),
    ("visa 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111", "CREDIT_CARD"),
    ("mc 5500-0000-0000-0004", "5500-0000-0000-0004", "CREDIT_CARD"),
    ("amex 378282246310005", "378282246310005", "CREDIT_CARD"),
    ("pay to DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00", "IBAN"),
    ("iban GB82WEST12345698765432", "GB82WEST12345698765432", "IBAN"),
    ("FR1420041010050500013M02606", "FR1420041010050500013M02606", "IBAN"),
    ("server at 192.168.1.20 is down", "192.168.1.20", "IP_ADDRESS"),
    ("from 203.0.113.7.", "203.0.113.7", "IP_ADDRESS"),
    ("v6 2001:db8::8a2e:370:7334 ok", "2001:db8::8a2e:370:7334", "IP_ADDRESS"),
    ("full fe80:0:0:0:202:b3ff:fe1e:8329", "fe80:0:0:0:202:b3ff:fe1e:8329", "IP_ADDRESS"),
    ("SSN 078-05-1120 on file", "078-05-1120", "NATIONAL_ID"),
    ("NINO AB 12 34 56 C", "AB 12 34 56 C", "NATIONAL_ID"),
    ("SIN 046 454 286", "046 454 286", "NATIONAL_ID"),
    ("DNI 12345678Z", "12345678Z", "NATIONAL_ID"),
    ("NIE X1234567L", "X1234567L", "NATIONAL_ID"),
    ("aadhaar 2345 6789 0124", "2345 6789 0124", "NATIONAL_ID"),
    ("key sk-proj-Abc123def456GHI789jkl012MNO345", "sk-proj-Abc123def456GHI789jkl012MNO345", "SECRET"),
    ("token ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", "SECRET"),
    ("aws AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ("Authorization: Bearer abcDEF123456ghiJKL789", "abcDEF123456ghiJKL789", "SECRET"),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "SECRET"),
    ("xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl", "SECRET"),
    ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "SECRET"),
    ("password=hunter2!", "hunter2!", "SECRET"),
    ('"api_key": "zQ9x8W7v6U5t"', "zQ9x8W7v6U5t", "SECRET"),
    (
        "secret 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "9f86d081884c7d659a2feaa0c55ad015",
        "SECRET",
    ),
    ("blob dGhpcyBpcyBhIHNlY3JldCBrZXkgZm9yIHRlc3RzIDEyMzQ1Njc4OTA=", "dGhpcyBpcyBhIHNlY3JldCBr", "SECRET"),
    (
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "eyJhbGciOiJIUzI1NiJ9",
        "SECRET",
    ),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "MIIEow", "SECRET"),
]

NEGATIVES = [
    "random digits 1234567812345678 fail the Luhn check",
    "a Luhn-valid number with no card prefix: 1234 5678 9012 3452",
    "the date is 2024-01-15 and the time 12:30:45",
    "version 1.2.3.4.5 and pi 3.14159 and order 12345",
    "price $1,234,567.89 and ISBN 978-3-16-148410-0",
    "DE00 1234 5678 9012 3456 78 has a wrong IBAN check digit",
    "std::vector<int> and a::b::c are C++",
    "SSN-shaped but invalid: 000-12-3456 and 666-12-3456",
    "the word Pneumonoultramicroscopicsilicovolcanoconiosis is long",
    "call me at extension 4711",
    "a sha is 0000000000000000000000000000000000000000 (all zeros)",
    "git commit abc123 and issue #4567",
    "no password here, just the word token",
    "localhost is ::1",
    "2048 tokens, 16 ranks, 3 epochs in 2026",
]


@pytest.mark.parametrize(
    ("text", "value", "kind"), POSITIVES, ids=[p[2] + "-" + str(i) for i, p in enumerate(POSITIVES)]
)
def test_finds_and_replaces(text: str, value: str, kind: str) -> None:
    redacted, counts = redact_text(text)
    assert value not in redacted, redacted
    assert f"[{kind}]" in redacted, redacted
    assert counts.get(kind, 0) >= 1
    assert set(counts) == {kind}, counts


@pytest.mark.parametrize("text", NEGATIVES)
def test_leaves_look_alikes_alone(text: str) -> None:
    assert redact_text(text) == (text, {})


def test_counts_several_in_one_text() -> None:
    text = "a@example.com, b@example.com, card 4111-1111-1111-1111, ip 10.0.0.1"
    redacted, counts = redact_text(text)
    assert counts == {"EMAIL": 2, "CREDIT_CARD": 1, "IP_ADDRESS": 1}
    assert redacted == "[EMAIL], [EMAIL], card [CREDIT_CARD], ip [IP_ADDRESS]"


def test_checksums() -> None:
    assert luhn_ok("4111111111111111")
    assert not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00")
    assert not iban_ok("DE88 3704 0044 0532 0130 00")


def test_precision_and_recall_on_the_labelled_set() -> None:
    found = sum(1 for text, value, _ in POSITIVES if value not in redact_text(text)[0])
    false_alarms = sum(1 for text in NEGATIVES if redact_text(text)[1])
    assert found == len(POSITIVES)
    assert false_alarms == 0


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, bigmodel_training.redact as r; sys.exit(1 if {'torch', 'transformers'} & set(sys.modules) else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
