"""PII and secret detectors: a regex finds candidates, a check (checksum, format rule) confirms them.

Detectors: `email`, `phone` (E.164 and common national formats), `card` (13-19 digits, a known issuer
prefix and the Luhn check), `iban` (country length and the mod-97 checksum), `ssn` (US, dashed, with
the SSA's format rules), `ip` (IPv4 and IPv6, parsed), `aws_key`, `github_token`, `slack_token`,
`jwt` (a decodable JSON header with `alg`), `private_key` (PEM blocks), `high_entropy` (the value of a
secret-named assignment such as `password=...`; password-like names always, other names when the
value looks random). A `Scanner` runs a set of them (plus custom regexes) over a text in one pass
each and masks what they find as `[REDACTED:<name>]`.

Cost is linear in the text: every pattern starts with a literal or a narrow class and most have a
cheap `in` prefilter, so clean text costs a few C-level scans (see bench/redact_bench.py).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Check = Callable[[re.Match[str]], tuple[int, int] | None]  # -> the span to mask, or None: not a hit


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_CARD_PREFIX = re.compile(r"4|5[1-5]|2(?:22[1-9]|2[3-9]\d|[3-6]\d\d|7[01]\d|720)|3[47]|3(?:0[0-5]|[68])"
                          r"|35(?:2[89]|[3-8])|6(?:011|5|4[4-9]|2)")


def card_valid(digits: str) -> bool:
    """13-19 digits with a known issuer prefix (Visa, Mastercard, Amex, Diners, JCB, Discover, UnionPay) and Luhn."""
    return 13 <= len(digits) <= 19 and _CARD_PREFIX.match(digits) is not None and luhn_valid(digits)


IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_valid(iban: str) -> bool:
    """Country, length for that country, and the ISO 7064 mod-97 checksum (== 1) of an IBAN without spaces."""
    if len(iban) < 15 or IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit() or not iban.isalnum():
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def ssn_valid(ssn: str) -> bool:
    """US SSN format rules (AAA-GG-SSSS): no 000/666/9xx area, no 00 group, no 0000 serial, not the known samples."""
    area, group, serial = ssn[0:3], ssn[4:6], ssn[7:11]
    return (area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"
            and ssn not in ("078-05-1120", "219-09-9999", "123-45-6789"))


def entropy(value: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


# --- checks: a match -> the span to mask ----------------------------------------------------------


def _whole(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span()


def _card(m: re.Match[str]) -> tuple[int, int] | None:
    digits = m.group().replace(" ", "").replace("-", "")
    return m.span() if card_valid(digits) else None


def _iban(m: re.Match[str]) -> tuple[int, int] | None:
    text = m.group()
    want = IBAN_LENGTHS.get(text[:2])
    if want is None:
        return None
    seen = end = 0
    while end < len(text) and seen < want:  # the first `want` characters that are not spaces
        if text[end] != " ":
            seen += 1
        end += 1
    if seen < want:
        return None
    rest = text[end:end + 1]
    if rest.isalnum():  # the candidate runs on without a break: not this IBAN
        return None
    return (m.start(), m.start() + end) if iban_valid(text[:end].replace(" ", "")) else None


def _ssn(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span() if ssn_valid(m.group()) else None


def _ipv4(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span()


def _ipv6(m: re.Match[str]) -> tuple[int, int] | None:
    text = m.group()
    if text.count(":") < 2 or not any(c not in ":0" for c in text):
        return None
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return None
    return m.span()


def _phone(m: re.Match[str]) -> tuple[int, int] | None:
    digits = sum(c.isdigit() for c in m.group())
    return m.span() if 8 <= digits <= 15 else None


def _jwt(m: re.Match[str]) -> tuple[int, int] | None:
    header = m.group(1)
    try:
        decoded = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except (binascii.Error, ValueError):
        return None
    return m.span() if decoded.startswith(b"{") and b'"alg"' in decoded else None


_PLACEHOLDERS = frozenset({"null", "none", "true", "false", "undefined", "redacted", "changeme", "xxxxxxxx",
                           "********", "required", "optional", "string"})
_PASSWORDY = re.compile(r"pass|pwd|secret|credential", re.I)


def secret_value(key: str, value: str) -> bool:
    """Whether `value`, assigned to a secret-named `key`, is a secret: password-like names take any real
    value (4+ characters, not a placeholder); other names (token, api_key, ...) a random-looking one."""
    low = value.lower()
    if low in _PLACEHOLDERS or value.startswith(("[REDACTED", "<", "${", "{{", "***", "%")):
        return False
    if _PASSWORDY.search(key):
        return len(value) >= 4
    return len(value) >= 16 and entropy(value) >= 3.5


def _assignment(m: re.Match[str]) -> tuple[int, int] | None:
    value = m.group("value")
    return m.span("value") if secret_value(m.group("key"), value) else None


@dataclass(frozen=True)
class Detector:
    name: str
    pattern: re.Pattern[str]
    check: Check = _whole
    hint: tuple[str, ...] = ()  # the text must contain one of these for the pattern to run (cheap prefilter)


_B = r"(?<![A-Za-z0-9_])"  # not inside a word
_E = r"(?![A-Za-z0-9_])"
SECRET_KEY = (r"(?:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?|client[_-]?secret|api[_-]?key|access[_-]?key"
              r"|auth[_-]?token|access[_-]?token|refresh[_-]?token|token|credentials?|private[_-]?key)")

BUILTIN: dict[str, list[Detector]] = {
    "email": [Detector("email", re.compile(
        r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
        r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-]|\.[A-Za-z0-9])"),
        hint=("@",))],
    "phone": [Detector("phone", re.compile(
        r"(?<![\w+.-])(?!\d{3}-\d{2}-\d{4}(?![\d-]))(?:"  # not the shape of a US SSN
        r"\+[1-9]\d{0,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # E.164, optionally grouped: +1 415 555 2671, +442079460958
        r"|\(?[2-9]\d{2}\)?[ .-]?[2-9]\d{2}[.-]\d{4}"  # NANP: (415) 555-2671, 415-555-2671, 415.555.2671
        r"|\([2-9]\d{2}\) ?[2-9]\d{2} \d{4}"
        r"|0[1-9]\d{0,3}(?:[ -]\d{2,4}){2,4}"  # trunk-prefixed national: 020 7946 0958, 01 23 45 67 89, 030-1234-567
        r")(?![\w-]|\.\d)"), _phone)],
    "card": [Detector("card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card)],
    "iban": [Detector("iban", re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,34}"), _iban)],
    "ssn": [Detector("ssn", re.compile(r"(?<![\d-])\d{3}-\d{2}-\d{4}(?![\d-])"), _ssn)],
    "ip": [
        Detector("ip", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
                                  r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\d|\.\d)"), _ipv4, hint=(".",)),
        Detector("ip", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?::?[0-9A-Fa-f]{1,4}|:){1,7}(?![\w:])"),
                 _ipv6, hint=("::", ":0", ":1", ":2", ":3", ":4", ":5", ":6", ":7", ":8", ":9", ":a", ":b", ":c",
                              ":d", ":e", ":f", ":A", ":B", ":C", ":D", ":E", ":F")),
    ],
    "aws_key": [Detector("aws_key", re.compile(
        r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z2-7]{16}(?![A-Z0-9])"))],
    "github_token": [Detector("github_token", re.compile(
        _B + r"(?:gh[pousr]_[A-Za-z0-9]{36,251}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59,240})" + _E),
        hint=("gh", "github_pat_"))],
    "slack_token": [Detector("slack_token", re.compile(
        _B + r"xox[abposr]-[0-9A-Za-z]{1,40}(?:-[0-9A-Za-z]{1,64}){1,4}" + _E), hint=("xox",))],
    "jwt": [Detector("jwt", re.compile(
        _B + r"(eyJ[A-Za-z0-9_-]{10,})\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{16,}" + r"(?![A-Za-z0-9_.-])"), _jwt,
        hint=("eyJ",))],
    "private_key": [Detector("private_key", re.compile(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)"),
        hint=("-----BEGIN",))],
    "high_entropy": [Detector("high_entropy", re.compile(
        r"(?i)(?<![A-Za-z0-9])(?P<key>[A-Za-z0-9_.-]*" + SECRET_KEY + r")[\"']?\s*[:=]\s*[\"']?"
        r"(?P<value>[^\s\"',;&}\]]{4,})"), _assignment, hint=("=", ":"))],
}
BUILTIN_NAMES = tuple(BUILTIN)
_SECRET_KEY_RE = re.compile(r"(?i)" + SECRET_KEY)


def secret_key(key: str) -> bool:
    """A structured field whose name says it holds a secret (for `high_entropy` on JSON objects)."""
    return _SECRET_KEY_RE.search(key) is not None


def custom(name: str, pattern: str) -> Detector:
    return Detector(name, re.compile(pattern))


class Scanner:
    """A fixed set of detectors; `find` lists the hits of a text, `mask` replaces them."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors: Sequence[Detector] = tuple(detectors)
        self.names = frozenset(d.name for d in self.detectors)
        self.entropy = "high_entropy" in self.names

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, detector) of every hit, sorted, overlaps resolved (the earliest, then the longest wins)."""
        hits: list[tuple[int, int, str]] = []
        for det in self.detectors:
            if det.hint and not any(h in text for h in det.hint):
                continue
            for m in det.pattern.finditer(text):
                span = det.check(m)
                if span is not None and span[1] > span[0]:
                    hits.append((span[0], span[1], det.name))
        if len(hits) < 2:
            return hits
        hits.sort(key=lambda h: (h[0], -h[1]))
        kept = [hits[0]]
        for hit in hits[1:]:
            if hit[0] >= kept[-1][1]:
                kept.append(hit)
        return kept

    def mask(self, text: str) -> tuple[str, list[str]]:
        """The text with every hit replaced by `[REDACTED:<detector>]`, and the detectors that hit."""
        hits = self.find(text)
        if not hits:
            return text, []
        out, pos = [], 0
        for start, end, name in hits:
            out.append(text[pos:start])
            out.append(f"[REDACTED:{name}]")
            pos = end
        out.append(text[pos:])
        return "".join(out), [h[2] for h in hits]


def scanner(names: Iterable[str], extra: Iterable[Detector] = ()) -> Scanner:
    """A scanner of the named built-in detectors (unknown names raise KeyError) plus `extra`."""
    return Scanner([d for n in names for d in BUILTIN[n]] + list(extra))
