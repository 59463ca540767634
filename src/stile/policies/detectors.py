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
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
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


# --- checks: a match -> the span to mask (boundaries are checked here, not by leading lookbehinds: a
# pattern that starts with a literal or a class is searched by the regex engine's fast prefix scan) --


def _after(text: str, start: int, forbidden: str) -> bool:
    """Whether the character before `start` is not one of `forbidden` (a match must not start mid-token)."""
    return start == 0 or text[start - 1] not in forbidden


_DIGITS = "0123456789"
_WORD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"
_UPPER_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _word_start(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span() if _after(m.string, m.start(), _WORD) else None


def _aws(m: re.Match[str]) -> tuple[int, int] | None:
    return m.span() if _after(m.string, m.start(), _UPPER_DIGITS) else None


def _card(m: re.Match[str]) -> tuple[int, int] | None:
    if not _after(m.string, m.start(), _DIGITS + "-"):
        return None
    digits = m.group().replace(" ", "").replace("-", "")
    return m.span() if card_valid(digits) else None


def _iban(m: re.Match[str]) -> tuple[int, int] | None:
    text = m.group()
    want = IBAN_LENGTHS.get(text[:2])
    if want is None or not _after(m.string, m.start(), _WORD):
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
    return m.span() if _after(m.string, m.start(), _DIGITS + "-") and ssn_valid(m.group()) else None


def _ipv4(m: re.Match[str]) -> tuple[int, int] | None:
    if not _after(m.string, m.start(), _DIGITS + "."):
        return None
    parts = m.group().split(".")
    ok = all(int(p) <= 255 and (p == "0" or not p.startswith("0")) for p in parts)
    return m.span() if ok else None


_PHONE_SHAPE_OF_SSN = re.compile(r"\d{3}-\d{2}-\d{4}$")


def _phone(m: re.Match[str]) -> tuple[int, int] | None:
    text = m.group()
    start = m.start()
    if not _after(m.string, start, _WORD + "+.-") or _PHONE_SHAPE_OF_SSN.match(text):
        return None
    if start >= 2 and m.string[start - 1] == " " and m.string[start - 2].isdigit():
        return None  # the tail of a longer group of digits (a card number that failed its checksum, an id)
    digits = sum(c.isdigit() for c in text)
    return m.span() if 8 <= digits <= 15 else None


def _jwt(m: re.Match[str]) -> tuple[int, int] | None:
    header = m.group(1)
    if not _after(m.string, m.start(), _WORD + "-"):
        return None
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


Finder = Callable[[str], Iterator[tuple[int, int]]]


def regex_finder(pattern: re.Pattern[str], check: Check | None = None, hint: tuple[str, ...] = ()) -> Finder:
    def find(text: str) -> Iterator[tuple[int, int]]:
        if hint and not any(h in text for h in hint):
            return
        for m in pattern.finditer(text):
            span = m.span() if check is None else check(m)
            if span is not None and span[1] > span[0]:
                yield span

    return find


_NUMERIC = re.compile(r"[0-9+(][0-9 ().+-]{6,}")
# (the last text, its numeric runs), shared by the digit detectors; one tuple, replaced whole (thread safe)
_numeric_memo: list[tuple[str | None, tuple[tuple[int, int], ...]]] = [(None, ())]


def _numeric_runs(text: str) -> tuple[tuple[int, int], ...]:
    """Spans of runs of digits and separators long enough for a phone, card, SSN or IPv4 (one pass)."""
    last, runs = _numeric_memo[0]
    if last is text:
        return runs
    runs = tuple(m.span() for m in _NUMERIC.finditer(text) if sum(c.isdigit() for c in m.group()) >= 4)
    _numeric_memo[0] = (text, runs)
    return runs


def numeric_finder(pattern: re.Pattern[str], check: Check) -> Finder:
    """A digit detector searched only inside the numeric runs (one character past each, for lookaheads)."""
    def find(text: str) -> Iterator[tuple[int, int]]:
        if not any(d in text for d in _DIGITS):
            return
        n = len(text)
        for start, end in _numeric_runs(text):
            for m in pattern.finditer(text, start, min(n, end + 2)):
                span = check(m)
                if span is not None and span[1] > span[0]:
                    yield span

    return find


_EMAIL_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
_EMAIL = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*"
                    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9-]|\.[A-Za-z0-9])")


def _emails(text: str) -> Iterator[tuple[int, int]]:
    """From each '@': back over the local part (at most 64 characters), then the anchored pattern."""
    at = text.find("@")
    done = 0
    while at != -1:
        start = at
        while start > done and at - start < 64 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        if start == 0 or text[start - 1] not in _EMAIL_LOCAL:
            m = _EMAIL.match(text, start)
            if m is not None:
                yield m.span()
                done = m.end()
        at = text.find("@", max(at + 1, done))


_HEX_COLON = frozenset("0123456789abcdefABCDEF:")
_HEX_COLON_DOT = _HEX_COLON | {"."}


def _ipv6s(text: str) -> Iterator[tuple[int, int]]:
    """From each ':' next to a hex digit or another ':': the run of hex digits and colons, parsed."""
    colon = text.find(":")
    n = len(text)
    done = 0
    while colon != -1:
        nxt = text[colon + 1] if colon + 1 < n else ""
        prev = text[colon - 1] if colon > 0 else ""
        if colon >= done and (nxt in _HEX_COLON and nxt) and (prev in _HEX_COLON or prev == "" or nxt == ":"):
            start, end = colon, colon + 1
            while start > 0 and text[start - 1] in _HEX_COLON:
                start -= 1
            while end < n and text[end] in _HEX_COLON_DOT:
                end += 1
            cand = text[start:end].rstrip(".")
            end = start + len(cand)
            bounded = (start == 0 or not (text[start - 1].isalnum() or text[start - 1] in "_.")) and (
                end == n or not (text[end].isalnum() or text[end] == "_"))
            if bounded and cand.count(":") >= 2 and any(c not in ":0." for c in cand):
                try:
                    ipaddress.IPv6Address(cand)
                except ValueError:
                    pass
                else:
                    yield start, end
            done = end
        colon = text.find(":", max(colon + 1, done))


_KEY_ROOTS = ("pass", "pwd", "secret", "key", "token", "credential")
_ASSIGNED = re.compile(r"[A-Za-z0-9_.-]{0,64}[\"']?\s{0,8}[:=]")
_KEY_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
_ASSIGNMENT = re.compile(r"(?i)(?P<key>[A-Za-z0-9_.-]{0,64}?" + r"(?:pass(?:word|wd|phrase)?|pwd|secret(?:[_-]?key)?"
                         r"|client[_-]?secret|api[_-]?key|access[_-]?key|auth[_-]?token|access[_-]?token"
                         r"|refresh[_-]?token|token|credentials?|private[_-]?key))[\"']?\s{0,8}[:=]\s{0,8}"
                         r"[\"']?(?P<value>[^\s\"',;&}\]]{4,})")


def _assignments(text: str) -> Iterator[tuple[int, int]]:
    """From each secret-like word root (found in the lower-cased text): the assignment around it."""
    low = text.lower()
    starts: set[int] = set()
    for root in _KEY_ROOTS:
        i = low.find(root)
        while i != -1:
            if _ASSIGNED.match(text, i) is not None:  # an assignment follows this word (C speed, bounded)
                start = i
                while start > 0 and i - start < 64 and text[start - 1] in _KEY_CHARS:  # bounded: linear time
                    start -= 1
                starts.add(start)
            i = low.find(root, i + len(root))
    done = 0
    for start in sorted(starts):
        if start < done:
            continue
        m = _ASSIGNMENT.match(text, start)
        if m is not None and secret_key(m.group("key")) and secret_value(m.group("key"), m.group("value")):
            yield m.span("value")
            done = m.end()


@dataclass(frozen=True)
class Detector:
    name: str
    find: Finder


def _re(name: str, pattern: str, check: Check | None = None, hint: tuple[str, ...] = ()) -> Detector:
    return Detector(name, regex_finder(re.compile(pattern), check, hint))


def _num(name: str, pattern: str, check: Check) -> Detector:
    return Detector(name, numeric_finder(re.compile(pattern), check))


_ANY_DIGIT = tuple(_DIGITS)
BUILTIN: dict[str, list[Detector]] = {
    "email": [Detector("email", _emails)],
    "phone": [_num("phone",  # the first character by a class (fast scan), then the branch it starts
                  r"[+(0-9](?:(?<=\+)[1-9][0-9]{0,3}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}"  # E.164: +1 415 555 2671, +4420...
                  r"|(?<=\()[2-9][0-9]{2}\) ?[2-9][0-9]{2}[ .-][0-9]{4}"  # (415) 555-2671
                  r"|(?<=[2-9])[0-9]{2}[ .-]?[2-9][0-9]{2}[.-][0-9]{4}"  # 415-555-2671, 415.555.2671
                  r"|(?<=0)[1-9][0-9]{0,3}(?:[ -][0-9]{2,4}){2,4}"  # trunk-prefixed: 020 7946 0958, 01 23 45 67 89
                  r")(?![\w-]|\.[0-9])", _phone)],
    "card": [_num("card", r"[0-9](?:[ -]?[0-9]){12,18}(?![0-9-])", _card)],
    "iban": [_re("iban", r"[A-Z][A-Z][0-9][0-9](?: ?[A-Z0-9]){11,34}", _iban, _ANY_DIGIT)],
    "ssn": [_num("ssn", r"[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9-])", _ssn)],
    "ip": [_num("ip", r"[0-9][0-9]{0,2}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9]|\.[0-9])", _ipv4),
           Detector("ip", _ipv6s)],
    "aws_key": [_re("aws_key", r"A(?:KIA|SIA|BIA|CCA|GPA|IDA|IPA|NPA|NVA|PKA|ROA|SCA)[A-Z2-7]{16}(?![A-Z0-9])", _aws)],
    "github_token": [_re("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{36,251}"
                         r"|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59,240})(?![A-Za-z0-9_])", _word_start)],
    "slack_token": [_re("slack_token", r"xox[abposr]-[0-9A-Za-z]{1,40}(?:-[0-9A-Za-z]{1,64}){1,4}(?![A-Za-z0-9_])",
                        _word_start)],
    "jwt": [_re("jwt", r"(eyJ[A-Za-z0-9_-]{10,})\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{16,}(?![A-Za-z0-9_.-])", _jwt)],
    "private_key": [_re("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s:,-]*)")],
    "high_entropy": [Detector("high_entropy", _assignments)],
}
BUILTIN_NAMES = tuple(BUILTIN)
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_SECRET_NAME = re.compile(r"(?:^|_)(?:pass|password|passwd|passphrase|pwd|secret|secret_key|client_secret|api_key"
                          r"|apikey|access_key|auth_token|access_token|refresh_token|token|credentials?|private_key)$")


def secret_key(key: str) -> bool:
    """Whether a name says it holds a secret: its last word(s), camelCase and `-`/`.` read as `_`
    (`db_password`, `apiKey`, `AWS_SECRET_ACCESS_KEY`, `x-api-key`; not `passenger`, `compass`, `token_count`)."""
    name = _CAMEL.sub(r"\1_\2", key).lower().replace("-", "_").replace(".", "_")
    return _SECRET_NAME.search(name) is not None


def custom(name: str, pattern: str) -> Detector:
    return _re(name, pattern)


class Scanner:
    """A fixed set of detectors; `find` lists the hits of a text, `mask` replaces them."""

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors: Sequence[Detector] = tuple(detectors)
        self.names = frozenset(d.name for d in self.detectors)
        self.entropy = "high_entropy" in self.names
        builtin = {id(d) for ds in BUILTIN.values() for d in ds}
        self.builtin_only = all(id(d) in builtin for d in self.detectors)

    def find(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, detector) of every hit, sorted, overlaps resolved (the earliest, then the longest wins)."""
        if self.builtin_only and (len(text) < 6 or ("A" not in text and text.replace(" ", "").isalpha())):
            return []  # too short for any built-in format, or only words (only an AWS key is all letters)
        hits: list[tuple[int, int, str]] = []
        for det in self.detectors:
            for start, end in det.find(text):
                hits.append((start, end, det.name))
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
