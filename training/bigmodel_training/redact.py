r"""Offline PII redaction: regular expressions plus checksums, standard library only.

`redact_text(text)` replaces personal data and secrets with typed placeholders and counts them:

    >>> redact_text("mail jane@example.org, card 4111 1111 1111 1111")
    ('mail [EMAIL], card [CREDIT_CARD]', {'EMAIL': 1, 'CREDIT_CARD': 1})

Types: EMAIL, PHONE (international, North American, national with a trunk 0, mainland Chinese
mobile numbers with or without +86 and spaces), CREDIT_CARD (Luhn + issuer prefix), IBAN (country
length + mod-97), IP_ADDRESS (v4 and v6, parsed by `ipaddress`), NATIONAL_ID (US SSN, UK NINO,
Canadian SIN with Luhn, Spanish DNI/NIE with check letter, Indian Aadhaar with Verhoeff, Chinese
resident ID with its ISO 7064 MOD 11-2 check character) and SECRET (API keys and tokens of
well-known providers, bearer tokens, JWTs, private keys, `password=...` values and long
high-entropy hex/base64 strings).

Next to Chinese (or any non-Latin) text: every pattern is compiled with `re.ASCII`, so `\b` and
`\w` mean ASCII letters, digits and `_`. With Unicode `\w`, CJK characters are word characters,
`\b` never fires between `邮箱` and `zhangwei@163.com`, and nothing was found. Not covered: personal
names and postal addresses (they need a dictionary or a trained NER model, which this offline,
import-light module deliberately does not have), and full-width digits.

Look-alikes that are left alone: `token: representation` (a key=value "secret" must look like
one: digits, symbols or mixed case), version strings (`v1.2.3.4`, `Chrome/120.0.0.0`) and git
object names (40 hex digits, or any hex after `commit`/`sha`).

Why not presidio-analyzer: its AnalyzerEngine needs a spaCy model (a download), installing it pulls
spaCy (~300 MB), importing it takes ~2 s, and even its pattern recognizers reach for the network
(tldextract's suffix list). The serving runtime imports this module for request logging, so it must
stay import-light and fully offline. Recognizers run in a fixed order (secrets first, phones last)
so that a longer, more specific match wins; placeholders contain no digits, so later recognizers
never re-match them.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDERS = {
    "SECRET": "[SECRET]",
    "EMAIL": "[EMAIL]",
    "IBAN": "[IBAN]",
    "CREDIT_CARD": "[CREDIT_CARD]",
    "NATIONAL_ID": "[NATIONAL_ID]",
    "IP_ADDRESS": "[IP_ADDRESS]",
    "PHONE": "[PHONE]",
}

# IBAN lengths by country (ISO 13616 registry, the common subset).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24,
    "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21,
    "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21,
    "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30,
    "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip

_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 4, 0, 6, 7, 8, 9, 5], [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7], [4, 0, 1, 2, 3, 9, 5, 6, 7, 8], [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2], [7, 6, 5, 9, 8, 2, 1, 0, 4, 3], [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]  # fmt: skip
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 5, 7, 6, 2, 8, 3, 0, 9, 4], [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7], [9, 4, 5, 3, 1, 2, 6, 8, 7, 0], [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5], [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]  # fmt: skip


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) checksum used by payment cards and Canadian SINs."""
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    number = _digits(match)
    if not 13 <= len(number) <= 19 or not luhn_ok(number):
        return False
    # Issuer prefixes: Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro.
    two, four = int(number[:2]), int(number[:4])
    return (
        number[0] == "4"
        or 51 <= two <= 55
        or 2221 <= four <= 2720
        or two in (34, 37, 36, 38, 62, 65)
        or four == 6011
        or 644 <= int(number[:3]) <= 649
        or 3528 <= four <= 3589
        or 300 <= int(number[:3]) <= 305
        or two in (50, 56, 57, 58, 63, 67)
    )


def iban_ok(match: str) -> bool:
    """Country length and the ISO 7064 mod-97 check of an IBAN (spaces allowed)."""
    iban = match.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _verhoeff_ok(number: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(number)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def _national_id_ok(match: str) -> bool:
    compact = re.sub(r"[\s-]", "", match).upper()
    if re.fullmatch(r"\d{12}", compact):  # Aadhaar
        return compact[0] not in "01" and _verhoeff_ok(compact)
    if re.fullmatch(r"\d{9}", compact) and re.fullmatch(r"\d{3}[ -]\d{3}[ -]\d{3}", match):  # Canadian SIN
        return luhn_ok(compact)
    if re.fullmatch(r"[XYZ0-9]\d{7}[A-Z]", compact):  # Spanish DNI / NIE
        number = int(str("XYZ".find(compact[0])) + compact[1:8] if compact[0] in "XYZ" else compact[:8])
        return "TRWAGMYFPDXBNJZSQVHLCKE"[number % 23] == compact[8]
    return True  # SSN and NINO are checked by their patterns alone


def _ip_ok(match: str) -> bool:
    try:
        address = ipaddress.ip_address(match)
    except ValueError:
        return False
    if address.version == 6:
        return sum(1 for part in match.split(":") if part) >= 2
    return True


def _entropy(value: str) -> float:
    counts = {c: value.count(c) for c in set(value)}
    return -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())


def _high_entropy_ok(match: str) -> bool:
    has_digit = any(c.isdigit() for c in match)
    has_alpha = any(c.isalpha() for c in match)
    if not (has_digit and has_alpha):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", match):
        return _entropy(match) > 3.0
    return any(c.isupper() for c in match) and any(c.islower() for c in match) and _entropy(match) > 4.0


def _phone_ok(match: str) -> bool:
    return 7 <= len(_digits(match)) <= 15


_CN_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]  # 2^(17-i) mod 11


def cn_id_ok(match: str) -> bool:
    """The ISO 7064 MOD 11-2 check character (0-9 or X) of an 18-character Chinese resident ID."""
    value = match.upper()
    if len(value) != 18 or not value[:17].isdigit():
        return False
    check = (12 - sum(int(d) * w for d, w in zip(value[:17], _CN_ID_WEIGHTS, strict=True)) % 11) % 11
    return value[17] == ("X" if check == 10 else str(check))


def _not_placeholder(match: str) -> bool:
    """False for a value an earlier recognizer already replaced (`api_key=[SECRET]`)."""
    return not any(placeholder in match for placeholder in PLACEHOLDERS.values())


def _secret_value_ok(match: str) -> bool:
    """A `token: ...` value is a secret only if it looks like one, not like a word."""
    if not _not_placeholder(match):
        return False
    has_digit = any(c.isdigit() for c in match)
    has_symbol = any(not c.isalnum() for c in match)
    mixed = any(c.isupper() for c in match) and any(c.islower() for c in match) and len(match) >= 12
    return has_digit or has_symbol or mixed


_GIT_CONTEXT = re.compile(r"(?i)(?:commit|sha(?:1|256)?|revision|rev|digest|hash)[\s:=@#-]*$")
_VERSION_CONTEXT = re.compile(r"(?i)(?:\bv|\bver(?:sion)?\.?|release|build|/|版本(?:号)?)\s*[:=：]?\s*$")


def _not_git_object(text: str, start: int, end: int) -> bool:
    value = text[start:end]
    if re.fullmatch(r"[0-9a-f]{40}", value):  # a git SHA-1 object name
        return False
    return not _GIT_CONTEXT.search(text[max(0, start - 16) : start])


def _not_version(text: str, start: int, end: int) -> bool:
    if any(len(part) > 1 and part[0] == "0" for part in text[start:end].split(".")):
        return False  # zero-padded octets: a version or a date, not an address
    return not _VERSION_CONTEXT.search(text[max(0, start - 12) : start])


@dataclass(frozen=True)
class Recognizer:
    """One PII pattern: `group` is the part replaced (0 = whole match), `check` a validator of the
    replaced text, `context` a validator of (whole text, start, end) for look-alikes."""

    kind: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None
    group: int = 0
    context: Callable[[str, int, int], bool] | None = None


def _r(
    kind: str,
    pattern: str,
    check: Callable[[str], bool] | None = None,
    group: int = 0,
    flags: int = 0,
    context: Callable[[str, int, int], bool] | None = None,
) -> Recognizer:
    # re.ASCII: \w, \d, \s and \b are ASCII-only, so patterns fire next to CJK characters.
    return Recognizer(kind, re.compile(pattern, flags | re.ASCII), check, group, context)


RECOGNIZERS: tuple[Recognizer, ...] = (
    # Secrets: well-known token shapes first, then key=value assignments, then generic high entropy.
    _r("SECRET", r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", flags=re.S),
    _r("SECRET", r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    _r("SECRET", r"\bsk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{20,}"),
    _r("SECRET", r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"),
    _r("SECRET", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    _r("SECRET", r"\bAIza[0-9A-Za-z_-]{35}"),
    _r("SECRET", r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    _r("SECRET", r"\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    _r("SECRET", r"\bhf_[A-Za-z0-9]{30,}"),
    _r("SECRET", r"\bglpat-[A-Za-z0-9_-]{20,}"),
    _r("SECRET", r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)", group=1),
    # key=value: the value is ASCII (secrets are), so "password=abc123，然后" stops at the comma.
    _r(
        "SECRET",
        r"(?i)(?<![A-Za-z0-9_])(?:password|passwd|pwd|密码)[\"']?\s*[:=：]\s*[\"']?([!#-&(-+\--:<-~]{6,})",
        _not_placeholder,
        group=1,
    ),
    _r(
        "SECRET",
        r"(?i)\b(?:secret|api[_-]?key|access[_-]?key|auth[_-]?token|token)"
        r"[\"']?\s*[:=：]\s*[\"']?([!#-&(-+\--:<-~]{6,})",
        _secret_value_ok,
        group=1,
    ),
    _r("SECRET", r"(?<![A-Za-z0-9+/_-])[0-9a-fA-F]{32,}(?![A-Za-z0-9+/_-])", _high_entropy_ok, context=_not_git_object),
    _r(
        "SECRET",
        r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/_-])",
        _high_entropy_ok,
        context=_not_git_object,
    ),
    _r(
        "EMAIL",
        r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
    ),
    _r("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", iban_ok),
    # Chinese resident ID before cards: 18 digits from Gansu (62...) can pass Luhn with a UnionPay prefix.
    _r(
        "NATIONAL_ID",
        r"(?<![A-Za-z0-9])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![A-Za-z0-9])",
        cn_id_ok,
    ),
    # Mainland mobile numbers (1[3-9]x xxxx xxxx, optional +86 / 0086, spaces or dashes): before
    # the international pattern, which would leave a bare 11-digit number alone.
    _r("PHONE", r"(?<![\d+])(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"),
    _r("CREDIT_CARD", r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])", _card_ok),
    # National IDs: US SSN (3-2-4, invalid areas excluded), UK NINO, Canadian SIN, Spanish DNI/NIE, Aadhaar.
    _r("NATIONAL_ID", r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"),
    _r("NATIONAL_ID", r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    _r("NATIONAL_ID", r"(?<![\d-])\d{3}[ -]\d{3}[ -]\d{3}(?![\d-])", _national_id_ok),
    _r("NATIONAL_ID", r"\b[XYZ0-9]\d{7}-?[A-Z]\b", _national_id_ok),
    _r("NATIONAL_ID", r"(?<![\d-])[2-9]\d{3} \d{4} \d{4}(?![\d-])", _national_id_ok),
    _r(
        "IP_ADDRESS",
        r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])",
        _ip_ok,
    ),
    _r(
        "IP_ADDRESS",
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w]|\.\d)",
        context=_not_version,
    ),
    # Phones: international (+CC ...), North American (3-3-4), national with a trunk 0 prefix.
    _r("PHONE", r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\d])", _phone_ok),
    _r("PHONE", r"(?<![\w(])(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"),
    _r("PHONE", r"(?<![\w])0\d{1,4}[ /-]\d{3,4}[ -]?\d{3,4}(?![\d])", _phone_ok),
)


def redact_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace PII in `text` with typed placeholders; return the new text and counts by type."""
    counts: dict[str, int] = {}
    for recognizer in RECOGNIZERS:
        text = _apply(recognizer, text, counts)
    return text, counts


def _apply(recognizer: Recognizer, text: str, counts: dict[str, int]) -> str:
    placeholder = PLACEHOLDERS[recognizer.kind]

    def replace(match: re.Match[str]) -> str:
        target = match.group(recognizer.group)
        if recognizer.check is not None and not recognizer.check(target):
            return match.group(0)
        if recognizer.context is not None and not recognizer.context(text, *match.span(recognizer.group)):
            return match.group(0)
        counts[recognizer.kind] = counts.get(recognizer.kind, 0) + 1
        if recognizer.group == 0:
            return placeholder
        start, end = match.span(recognizer.group)
        offset = match.start(0)
        whole = match.group(0)
        return whole[: start - offset] + placeholder + whole[end - offset :]

    return recognizer.pattern.sub(replace, text)


def merge_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    """Add `more` into `total` in place and return it."""
    for kind, n in more.items():
        total[kind] = total.get(kind, 0) + n
    return total
