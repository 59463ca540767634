"""A seeded, labelled corpus for the redaction detectors: valid values and near misses in filler text.

`corpus(seed, n)` yields `Sample(text, labels)`: one value per sample embedded in prose, labelled with
the detector that should find it, or with no label for a near miss (a Luhn-invalid card, an IBAN with
a wrong checksum, an e-mail lookalike, an SSN with a forbidden area, an out-of-range IPv4, ...).
`clean_text(seed, size)` is filler without anything to find; `hit_text` the same with values mixed in.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stile.policies.detectors import IBAN_LENGTHS, luhn_valid

WORDS = ("the", "order", "was", "shipped", "on", "time", "and", "customer", "asked", "for", "a", "refund", "because",
         "parcel", "arrived", "late", "please", "check", "account", "status", "before", "friday", "our", "team",
         "reviewed", "ticket", "number", "seven", "closed", "it", "version", "two", "of", "report", "lists", "revenue",
         "by", "region", "with", "totals", "per", "quarter")
ALNUM = string.ascii_letters + string.digits


@dataclass(frozen=True)
class Sample:
    text: str
    label: str | None  # the detector that must find the value; None: a near miss nothing may find
    detector: str  # which detector the value tests (for near misses: the one it imitates)


def _luhn(prefix: str, length: int, r: random.Random, valid: bool) -> str:
    body = prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1))
    digits = [body + str(d) for d in range(10)]
    good = [d for d in digits if luhn_valid(d)]
    bad = [d for d in digits if not luhn_valid(d)]
    return r.choice(good if valid else bad)


def _group(num: str, r: random.Random) -> str:
    sep = r.choice(["", " ", "-"])
    return sep.join(num[i:i + 4] for i in range(0, len(num), 4)) if sep else num


def card(r: random.Random, valid: bool) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                               ("6011", 16), ("3528", 16)])
    return _group(_luhn(prefix, length, r, valid), r)


def iban(r: random.Random, valid: bool) -> str:
    country = r.choice(sorted(IBAN_LENGTHS))
    bban = "".join(r.choice(string.digits + string.ascii_uppercase) for _ in range(IBAN_LENGTHS[country] - 4))
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    check = 98 - n % 97
    if not valid:
        check = (check + r.randint(1, 96)) % 97 + 1 if check != 1 else 2  # any other check digits
        if check == 98 - n % 97:
            check = check % 97 + 1
    value = f"{country}{check:02d}{bban}"
    return " ".join(value[i:i + 4] for i in range(0, len(value), 4)) if r.random() < 0.5 else value


def email(r: random.Random, valid: bool) -> str:
    user = "".join(r.choice(string.ascii_lowercase) for _ in range(r.randint(3, 10)))
    if r.random() < 0.3:
        user += "." + "".join(r.choice(string.ascii_lowercase) for _ in range(4))
    domain = r.choice(["example.com", "mail.example.org", "corp.example.co.uk", "ex-ample.io"])
    if valid:
        return f"{user}@{domain}"
    return r.choice([f"{user}@localhost", f"{user}@{domain.split('.')[0]}", f"{user}@@{domain}",
                     f"@{user}", f"{user}@.{domain}", f"{user}@{domain.replace('.', '..', 1)}"])


def phone(r: random.Random, valid: bool) -> str:
    def d(k: int) -> str:
        return "".join(r.choice(string.digits) for _ in range(k))

    def n(k: int) -> str:
        return str(r.randint(2, 9)) + d(k - 1)

    if valid:
        return r.choice([f"+1 {n(3)} {n(3)} {d(4)}", f"({n(3)}) {n(3)}-{d(4)}", f"{n(3)}-{n(3)}-{d(4)}",
                         f"+44 20 {d(4)} {d(4)}", f"+33 {r.randint(1, 9)} {d(2)} {d(2)} {d(2)} {d(2)}",
                         f"0{r.randint(1, 9)}{d(1)} {d(4)} {d(4)}", f"+49{d(10)}"])
    return r.choice([f"{r.randint(1990, 2030)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                     f"{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 99)}", f"#{d(7)}",
                     f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}", f"{d(2)}%", f"{d(4)}"])


def ssn(r: random.Random, valid: bool) -> str:
    if valid:
        area = r.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    return r.choice([f"000-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
                     f"666-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
                     f"{r.randint(900, 999)}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
                     f"{r.randint(1, 665):03d}-00-{r.randint(1, 9999):04d}"])


def ip(r: random.Random, valid: bool) -> str:
    if valid:
        if r.random() < 0.6:
            return ".".join(str(r.randint(0, 255)) for _ in range(4))
        groups = [f"{r.randint(0, 0xffff):x}" for _ in range(8)]
        return ":".join(groups) if r.random() < 0.5 else f"2001:db8::{groups[0]}:{groups[1]}"
    return r.choice([".".join(str(r.randint(256, 999)) if i == 0 else str(r.randint(0, 255)) for i in range(4)),
                     ".".join(str(r.randint(0, 255)) for _ in range(3)),
                     f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}"])


def aws_key(r: random.Random, valid: bool) -> str:
    tail = "".join(r.choice(string.ascii_uppercase + "234567") for _ in range(16))
    return ("AKIA" if valid else r.choice(["AKIB", "XKIA", "AKIA1"])) + (tail if valid else tail[:r.choice([12, 16])])


def github_token(r: random.Random, valid: bool) -> str:
    body = "".join(r.choice(ALNUM) for _ in range(36))
    if valid:
        return r.choice(["ghp_", "gho_", "ghs_"]) + body if r.random() < 0.8 else (
            "github_pat_" + body[:22] + "_" + "".join(r.choice(ALNUM) for _ in range(59)))
    return r.choice(["ghx_" + body, "ghp_" + body[:20], "ghp-" + body])


def slack_token(r: random.Random, valid: bool) -> str:
    def d(k: int) -> str:
        return "".join(r.choice(string.digits) for _ in range(k))

    if valid:
        return f"xox{r.choice('bpa')}-{d(12)}-{d(13)}-" + "".join(r.choice(ALNUM) for _ in range(24))
    return r.choice([f"xoxz-{d(12)}-{d(13)}", f"xox{r.choice('bp')}", f"xoxb{d(12)}"])


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def jwt(r: random.Random, valid: bool) -> str:
    sig = "".join(r.choice(ALNUM + "-_") for _ in range(43))
    payload = _b64({"sub": str(r.randint(1, 10**9)), "iat": r.randint(10**9, 2 * 10**9)})
    if valid:
        return f"{_b64({'alg': r.choice(['HS256', 'RS256', 'ES256']), 'typ': 'JWT'})}.{payload}.{sig}"
    return r.choice([f"{_b64({'alg': 'HS256'})}.{payload}", f"{_b64({'typ': 'x'})}.{payload}.{sig}",
                     "eyJ" + sig[:12]])


def private_key(r: random.Random, valid: bool) -> str:
    body = "\n".join("".join(r.choice(ALNUM + "+/") for _ in range(64)) for _ in range(3))
    kind = r.choice(["RSA ", "EC ", "OPENSSH ", ""])
    if valid:
        return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"
    return r.choice([f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----",
                     f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"])


def high_entropy(r: random.Random, valid: bool) -> str:
    secret = "".join(r.choice(ALNUM + "/+") for _ in range(r.randint(20, 40)))
    if valid:
        key = r.choice(["password", "client_secret", "api_key", "AWS_SECRET_ACCESS_KEY", "token", "db_passwd"])
        return r.choice([f"{key}={secret}", f'"{key}": "{secret}"', f"{key}: {secret}"])
    return r.choice(["password: null", "token=${TOKEN}", "tokens: 500", "api_key=<your key here>",
                     "secret: true", f"color={secret[:6]}", f"sha={secret}"])


GENERATORS: dict[str, Callable[[random.Random, bool], str]] = {
    "email": email, "phone": phone, "card": card, "iban": iban, "ssn": ssn, "ip": ip, "aws_key": aws_key,
    "github_token": github_token, "slack_token": slack_token, "jwt": jwt, "private_key": private_key,
    "high_entropy": high_entropy,
}


def _prose(r: random.Random, words: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(words))


def corpus(seed: int = 15, per_detector: int = 400) -> Iterator[Sample]:
    """`per_detector` samples per detector, half valid, half near misses, each inside a short sentence."""
    r = random.Random(seed)
    for name, gen in GENERATORS.items():
        for i in range(per_detector):
            valid = i % 2 == 0
            value = gen(r, valid)
            yield Sample(f"{_prose(r, r.randint(3, 8))} {value} {_prose(r, r.randint(3, 8))}.",
                         name if valid else None, name)


def clean_text(seed: int, size: int) -> str:
    r = random.Random(seed)
    out: list[str] = []
    length = 0
    while length < size:
        out.append(r.choice(WORDS) if r.random() < 0.95 else str(r.randint(1, 9999)))
        length += len(out[-1]) + 1
    return " ".join(out)[:size]


def hit_text(seed: int, size: int, every: int = 200) -> str:
    """Filler with one valid value (of a random detector) about every `every` characters."""
    r = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < size:
        chunk = clean_text(r.randint(0, 10**9), every)
        value = GENERATORS[r.choice(list(GENERATORS))](r, True)
        parts += [chunk, value]
        length += len(chunk) + len(value) + 2
    return " ".join(parts)[:size]


def ambiguous(seed: int = 15, n: int = 400) -> Iterator[Sample]:
    """Values that are not PII but share a format with it (flagged by design): a Luhn-valid 16-digit order
    id with a Visa prefix, a 4-part version string, a 10-digit reference formatted like a US number, a
    40-character hex digest assigned to `token`. Labelled None; the detector named is the one they imitate."""
    r = random.Random(seed)
    makers: list[tuple[str, Callable[[], str]]] = [
        ("card", lambda: "order " + _luhn("4", 16, r, True)),
        ("ip", lambda: "version " + ".".join(str(r.randint(0, 20)) for _ in range(4))),
        ("phone", lambda: f"ref {r.randint(200, 999)}-{r.randint(200, 999)}-{r.randint(0, 9999):04d}"),
        ("high_entropy", lambda: "token=" + "".join(r.choice("0123456789abcdef") for _ in range(40))),
    ]
    for i in range(n):
        name, make = makers[i % len(makers)]
        yield Sample(f"{_prose(r, 4)} {make()} {_prose(r, 4)}.", None, name)
