"""PII redaction measured on a labelled Chinese + English set generated here (seeded, synthetic).

Every planted value is valid for its kind (check digits computed), in the formats people write
(spaces, dashes, +86, no separator), directly next to CJK characters or ASCII punctuation. Traps
(order numbers, versions, git SHAs, dates, `token: representation`) are mixed in. Per kind:
recall = planted values removed and replaced by their placeholder / planted, precision = correct
placeholders / placeholders. Run with `-s` to see the table.
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Callable

from bigmodel_training.redact import PLACEHOLDERS, cn_id_ok, luhn_ok, redact_text

KINDS = list(PLACEHOLDERS)
_CN_ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]


def cn_id(rng: random.Random, want_x: bool = False) -> str:
    while True:
        area = rng.choice(["110105", "310104", "440305", "510107", "620102", "330106", "420111"])
        birth = f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        body = area + birth + f"{rng.randint(0, 999):03d}"
        check = (12 - sum(int(d) * w for d, w in zip(body, _CN_ID_WEIGHTS, strict=True)) % 11) % 11
        value = body + ("X" if check == 10 else str(check))
        if (check == 10) == want_x:
            return value


def luhn_number(rng: random.Random, prefix: str, length: int) -> str:
    while True:
        body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
        for last in string.digits:
            if luhn_ok(body + last):
                return body + last


def grouped(number: str, sep: str, size: int = 4) -> str:
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


def iban(rng: random.Random) -> str:
    country, bban = rng.choice(
        [("DE", "".join(rng.choice(string.digits) for _ in range(18))),
         ("GB", "NWBK" + "".join(rng.choice(string.digits) for _ in range(14))),
         ("FR", "".join(rng.choice(string.digits) for _ in range(23)))]
    )  # fmt: skip
    numeric = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    value = f"{country}{98 - numeric % 97:02d}{bban}"
    return grouped(value, " ") if rng.random() < 0.5 else value


def mobile(rng: random.Random) -> str:
    number = rng.choice("3456789") + "".join(rng.choice(string.digits) for _ in range(9))
    n = "1" + number
    return rng.choice([n, f"{n[:3]} {n[3:7]} {n[7:]}", f"{n[:3]}-{n[3:7]}-{n[7:]}", f"+86 {n}", f"+86{n}",
                       f"+86 {n[:3]} {n[3:7]} {n[7:]}", f"0086-{n}"])  # fmt: skip


def phone(rng: random.Random) -> str:
    if rng.random() < 0.6:
        return mobile(rng)
    return rng.choice([
        f"010-{rng.randint(60000000, 89999999)}", f"021-{rng.randint(5000, 6999)} {rng.randint(1000, 9999)}",
        f"(415) 555-{rng.randint(1000, 9999)}", f"+1 212 555 {rng.randint(1000, 9999)}",
        f"+44 20 7946 {rng.randint(1000, 9999)}", f"+49 30 {rng.randint(100000, 999999)}",
    ])  # fmt: skip


def email(rng: random.Random) -> str:
    user = rng.choice(["zhangwei", "li.na", "wang_fang88", "chen.jie", "liu.yang2001", "jane.doe", "ops+alerts"])
    return f"{user}@{rng.choice(['163.com', 'qq.com', '126.com', 'example.org', 'mail.example.cn', 'sina.com.cn'])}"


def card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("52", 16), ("62", 16), ("62", 19), ("37", 15), ("6011", 16)])
    number = luhn_number(rng, prefix, length)
    return rng.choice([number, grouped(number, " "), grouped(number, "-")]) if length == 16 else number


def ip(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(
            str(x) for x in (rng.randint(11, 223), rng.randint(0, 255), rng.randint(0, 255), rng.randint(1, 254))
        )
    return f"2001:db8:{rng.randint(1, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"


def national_id(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.6:
        return cn_id(rng, want_x=rng.random() < 0.3)
    if roll < 0.8:
        return f"{rng.randint(1, 665):03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"
    return rng.choice(["AB 12 34 56 C", "12345678Z", "X1234567L", "2345 6789 0124"])


def secret(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    tail = "".join(rng.choice(alnum) for _ in range(36))
    return rng.choice([
        f"sk-proj-{tail}", f"ghp_{tail}", "AKIA" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(16)),
        f"hf_{tail[:34]}", f"sk_live_{tail[:24]}", "".join(rng.choice("0123456789abcdef") for _ in range(32)),
    ])  # fmt: skip


GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "EMAIL": email, "PHONE": phone, "CREDIT_CARD": card, "IBAN": iban,
    "IP_ADDRESS": ip, "NATIONAL_ID": national_id, "SECRET": secret,
}  # fmt: skip
TEMPLATES = [
    "请联系张伟，电话：{PHONE}，邮箱{EMAIL}",
    "我的手机号是{PHONE}，有事打给我。",
    "客户李娜（身份证号{NATIONAL_ID}）的银行卡{CREDIT_CARD}已冻结",
    "身份证{NATIONAL_ID}，手机{PHONE}，邮箱：{EMAIL}。",
    "服务器{IP_ADDRESS}无法访问，请检查",
    "请把款项汇到{IBAN}，谢谢",
    "密钥{SECRET}请勿外泄",
    "api_key={SECRET}，已轮换",
    "发邮件到{EMAIL}或者拨打{PHONE}联系王芳",
    "Please call {PHONE} or write to {EMAIL}.",
    "Card {CREDIT_CARD} was charged; IBAN {IBAN} refunded.",
    "The login came from {IP_ADDRESS} at 10:42.",
    "Applicant ID {NATIONAL_ID}, phone {PHONE}.",
    "export OPENAI_API_KEY={SECRET}",
    "用户{EMAIL}在{IP_ADDRESS}登录",
    "卡号：{CREDIT_CARD}，有效期12/29",
]
TRAPS = [
    "订单号20231201123456已发货，价格1399元",
    "版本1.2.3.4已经发布，见 v2.0.1.3 说明",
    "User-Agent: Mozilla/5.0 Chrome/120.0.0.0 Safari/537.36",
    "修复见 commit 9fceb02d0ae598e95dc970b74767f19372d61af8 和 sha256:{sha}",
    "git log: 2f4a9b1c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a fix tokenizer",
    "token: representation of the next word",
    "each token: embedding plus position",
    "2024年1月15日 13:45:00，第3章第12节，邮编100080",
    "ISBN 978-7-111-12345-6，学号2021123456，时间戳1700000000",
    "pi is 3.14159, torch==2.13.0 and release 10.2.0.1 notes",
    "max_tokens=2048, batch 16, 3 epochs",
]


def build_set(seed: int = 20261130, rounds: int = 12) -> list[tuple[str, list[tuple[str, str]]]]:
    """(text, [(kind, value), ...]) samples; traps have no labels."""
    rng = random.Random(seed)
    samples: list[tuple[str, list[tuple[str, str]]]] = []
    for _ in range(rounds):
        for template in TEMPLATES:
            planted: list[tuple[str, str]] = []
            values = {}
            for kind in KINDS:
                if "{" + kind + "}" in template:
                    values[kind] = GENERATORS[kind](rng)
                    planted.append((kind, values[kind]))
            samples.append((template.format(**values), planted))
    sha = "".join(rng.choice("0123456789abcdef") for _ in range(64))
    samples += [(trap.replace("{sha}", sha), []) for trap in TRAPS]
    return samples


def measure(samples: list[tuple[str, list[tuple[str, str]]]]) -> dict[str, tuple[int, int, int]]:
    """kind → (planted, found, placeholders inserted)."""
    planted: Counter[str] = Counter()
    found: Counter[str] = Counter()
    inserted: Counter[str] = Counter()
    for text, labels in samples:
        redacted, counts = redact_text(text)
        inserted.update(counts)
        for kind, value in labels:
            planted[kind] += 1
            if value not in redacted and PLACEHOLDERS[kind] in redacted:
                found[kind] += 1
    return {kind: (planted[kind], found[kind], inserted[kind]) for kind in KINDS}


def test_recall_and_precision_per_kind_on_chinese_and_english_text() -> None:
    samples = build_set()
    assert all(cn_id_ok(v) for _, labels in samples for k, v in labels if k == "NATIONAL_ID" and len(v) == 18)
    table = measure(samples)
    print(f"\n{'kind':12} {'planted':>7} {'found':>6} {'inserted':>8} {'recall':>7} {'precision':>9}")
    failures = []
    for kind, (planted, found, inserted) in table.items():
        recall = found / planted if planted else 1.0
        precision = min(found, inserted) / inserted if inserted else 1.0
        print(f"{kind:12} {planted:7d} {found:6d} {inserted:8d} {recall:7.3f} {precision:9.3f}")
        assert planted >= 12, kind
        if recall < 0.95 or precision < 0.90:
            failures.append(kind)
    assert not failures, failures


def test_the_example_from_the_issue() -> None:
    redacted, counts = redact_text("请联系张伟，电话：13912345678，邮箱zhangwei@163.com")
    assert redacted == "请联系张伟，电话：[PHONE]，邮箱[EMAIL]"
    assert counts == {"PHONE": 1, "EMAIL": 1}


def test_traps_are_left_alone() -> None:
    for trap in TRAPS:
        text = trap.replace("{sha}", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        assert redact_text(text) == (text, {}), text


def test_chinese_resident_id_check_character() -> None:
    assert cn_id_ok("11010519491231002X")
    assert not cn_id_ok("110105194912310021")
    assert cn_id_ok("11010519491231002x".upper())
    assert redact_text("证件号11010519491231002X。")[1] == {"NATIONAL_ID": 1}
    assert redact_text("证件号110105194912310021。")[1] == {}  # wrong check character: not an ID
