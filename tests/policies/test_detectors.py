"""Detectors: checksums (Luhn, mod-97) against independent implementations, hits and near misses per detector."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.policies.detectors import (
    BUILTIN_NAMES,
    IBAN_LENGTHS,
    card_valid,
    custom,
    iban_valid,
    luhn_valid,
    scanner,
    ssn_valid,
)

ALL = scanner(BUILTIN_NAMES)


def _luhn_reference(number: str) -> bool:
    digits = [int(c) for c in number]
    odd, even = digits[-1::-2], digits[-2::-2]
    return (sum(odd) + sum(sum(divmod(2 * d, 10)) for d in even)) % 10 == 0


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it Luhn-valid."""
    return next(prefix + str(d) for d in range(10) if _luhn_reference(prefix + str(d)))


@given(st.text(alphabet="0123456789", min_size=1, max_size=40))
def test_luhn_agrees_with_a_reference_implementation(number: str) -> None:
    assert luhn_valid(number) == _luhn_reference(number)


@given(st.text(alphabet="0123456789", min_size=12, max_size=18), st.integers(1, 9))
def test_changing_one_digit_of_a_valid_number_breaks_luhn(body: str, delta: int) -> None:
    number = _luhn_complete(body)
    assert luhn_valid(number)
    i = len(number) // 2
    changed = number[:i] + str((int(number[i]) + delta) % 10) + number[i + 1:]
    assert not luhn_valid(changed)


@given(st.sampled_from(["4", "51", "55", "2221", "2720", "34", "37", "6011", "65", "3528", "36"]),
       st.integers(13, 19), st.data(), st.sampled_from(["", " ", "-"]))
def test_a_luhn_valid_card_in_text_is_found_and_a_luhn_invalid_one_is_not(
        prefix: str, length: int, data: st.DataObject, sep: str) -> None:
    body = prefix + data.draw(st.text(alphabet="0123456789", min_size=length - len(prefix) - 1,
                                      max_size=length - len(prefix) - 1))
    valid = _luhn_complete(body)
    invalid = body + str((int(valid[-1]) + data.draw(st.integers(1, 9))) % 10)

    def grouped(number: str) -> str:
        return sep.join(number[i:i + 4] for i in range(0, len(number), 4))

    card_only = scanner(["card"])
    assert card_only.find(f"paid with {grouped(valid)}, thanks") == [(10, 10 + len(grouped(valid)), "card")]
    assert card_only.find(f"paid with {grouped(invalid)}, thanks") == []


def _iban_of(country: str, bban: str) -> str:
    """A valid IBAN for `country` and `bban` (ISO 13616 check digits computed independently)."""
    n = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    return f"{country}{98 - n % 97:02d}{bban}"


@settings(max_examples=200)
@given(st.sampled_from(sorted(IBAN_LENGTHS)), st.data())
def test_a_generated_iban_is_valid_and_one_changed_character_is_not(country: str, data: st.DataObject) -> None:
    bban = data.draw(st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=IBAN_LENGTHS[country] - 4,
                             max_size=IBAN_LENGTHS[country] - 4))
    iban = _iban_of(country, bban)
    assert iban_valid(iban)
    i = data.draw(st.sampled_from([j for j in range(2, len(iban)) if iban[j].isdigit()]))
    repl = data.draw(st.sampled_from([c for c in "0123456789" if c != iban[i]]))
    assert not iban_valid(iban[:i] + repl + iban[i + 1:])  # mod 97 catches every single digit substitution
    assert not iban_valid(iban + "0") and not iban_valid(iban[:-1])  # the length is the country's
    assert ALL.find(f"pay to {iban} today") == [(7, 7 + len(iban), "iban")]


@given(st.text(max_size=300))
def test_masking_never_fails_and_leaves_text_without_hits_unchanged(text: str) -> None:
    masked, hits = ALL.mask(text)
    if not hits:
        assert masked == text
    else:
        assert all(f"[REDACTED:{h}]" in masked for h in hits)


HITS = [
    ("email", "write to ada.lovelace+tag@mail.example.co.uk please"),
    ("phone", "call +1 415 555 2671"), ("phone", "call (415) 555-2671"), ("phone", "call 415.555.2671"),
    ("phone", "call +442079460958"), ("phone", "ring 020 7946 0958"), ("phone", "appel 01 23 45 67 89"),
    ("card", "card 4111 1111 1111 1111"), ("card", "card 5555-5555-5555-4444"), ("card", "amex 378282246310005"),
    ("iban", "IBAN GB82 WEST 1234 5698 7654 32."), ("iban", "iban: DE89370400440532013000"),
    ("ssn", "SSN 536-22-1234"),
    ("ip", "from 10.0.0.1"), ("ip", "from 2001:db8::8a2e:370:7334"), ("ip", "loopback ::1 ok"),
    ("aws_key", "AKIAIOSFODNN7EXAMPLE"), ("github_token", "ghp_" + "A1b2" * 9),
    ("github_token", "github_pat_" + "a" * 22 + "_" + "B" * 59), ("slack_token", "xoxb-123456789012-abcdefABCDEF"),
    ("jwt", "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
            "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----"),
    ("private_key", "truncated -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC"),
    ("high_entropy", "password=hunter22"), ("high_entropy", '"client_secret": "c9Fq2LmZ8xWv3RtY7uNb"'),
    ("high_entropy", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
]
MISSES = [
    ("email", "user@localhost, a@b.c, name@domain..com, @handle, x@-bad.com"),
    ("phone", "on 2024-01-15 at 12:30, version 1.2.3, order 1234567, id 123456789"),
    ("card", "4111 1111 1111 1112 and 1234 5678 9012 3456 and " + _luhn_complete("911111111111111")),
    ("iban", "DE89 3704 0044 0532 0130 01, XX89370400440532013000, GB82WEST123456987654"),
    ("ssn", "000-12-3456 666-12-3456 900-12-3456 536-00-1234 536-22-0000 123-45-6789"),
    ("ip", "256.1.1.1 and 1.2.3 and 12:30:45 and 1.2.3.4.5"),
    ("aws_key", "AKIA123 and XKIAIOSFODNN7EXAMPLE"), ("github_token", "ghp_short and ghx_" + "a" * 36),
    ("slack_token", "xoxb alone and xoxz-1234-5678"), ("jwt", "eyJhbGciOi alone and eyJabc.eyJdef"),
    ("private_key", "-----BEGIN PUBLIC KEY-----"),
    ("high_entropy", "password: null, token: ${TOKEN}, tokens: 500, passwords are long, api_key=<your key>"),
    ("high_entropy", "compass: north-east, passenger: Ada, bypass=enabled, token_count: 9f8e7d6c5b4a39281706"),
]


@pytest.mark.parametrize(("name", "text"), HITS)
def test_each_detector_finds_its_format(name: str, text: str) -> None:
    hits = scanner([name]).find(text)
    assert [h[2] for h in hits] == [name], text
    masked, _ = ALL.mask(text)
    assert f"[REDACTED:{name}]" in masked


@pytest.mark.parametrize(("name", "text"), MISSES)
def test_each_detector_passes_its_near_misses(name: str, text: str) -> None:
    assert scanner([name]).find(text) == [], text


def test_cards_need_an_issuer_prefix_as_well_as_luhn() -> None:
    unknown_issuer = _luhn_complete("911111111111111")
    assert card_valid("4111111111111111") and luhn_valid(unknown_issuer) and not card_valid(unknown_issuer)


def test_ssn_format_rules() -> None:
    assert ssn_valid("536-22-1234")
    assert not any(ssn_valid(s) for s in ("000-22-1234", "666-22-1234", "912-22-1234", "536-00-1234",
                                          "536-22-0000", "078-05-1120"))


def test_overlapping_hits_mask_once_and_custom_detectors_apply() -> None:
    scan = scanner(["email", "high_entropy"], [custom("ticket", r"TCK-[0-9]{6}")])
    masked, hits = scan.mask("token=ada@example.com for TCK-123456")
    assert masked.count("[REDACTED:") == 2 and "TCK-" not in masked and "ada@" not in masked
    assert "ticket" in hits


def test_secret_names_are_read_by_their_last_words() -> None:
    from stile.policies.detectors import secret_key

    assert all(secret_key(k) for k in ("password", "db_password", "apiKey", "AWS_SECRET_ACCESS_KEY", "x-api-key",
                                       "clientSecret", "github.token", "db_pass"))
    assert not any(secret_key(k) for k in ("passenger", "compass", "token_count", "password_hash", "tokens"))


def test_only_the_value_of_an_assignment_is_masked() -> None:
    assert ALL.mask("password=hunter22 user=ada")[0] == "password=[REDACTED:high_entropy] user=ada"


@pytest.mark.parametrize("text", ["pass_" * 20_000, "token-" * 16_000, "a:" * 50_000, "x@" * 50_000, "1 " * 50_000,
                                  "-----BEGIN PRIVATE KEY-----" * 4_000, "AKIA" * 25_000, "(" + "1-" * 50_000,
                                  "a." * 50_000, "eyJ" * 30_000, "ghp_" * 25_000, "xoxb-1" * 16_000,
                                  "DE89 " * 20_000, "4" * 100_000, "1.1." * 25_000, "+1 " * 30_000])
def test_adversarial_text_costs_linear_time(text: str) -> None:
    # a quadratic scan of 100 KB takes minutes; linear takes milliseconds (the bound is 100x generous)
    start = time.process_time()
    ALL.mask(text)
    assert time.process_time() - start < 2.0


def test_an_exempt_role_is_exempt_only_where_it_applies() -> None:
    from stile.config.model import GatewayConfig
    from stile.policies.redact import Redact, RedactConfig

    cfg = GatewayConfig.model_validate({
        "virtual_servers": {"a": {}, "b": {}},
        "roles": {"auditor": {"virtual_servers": ["a"], "allow_tools": ["*"]}, "bot": {"allow_tools": ["*"]}}})
    redact = Redact(RedactConfig.model_validate({"detectors": ["email"], "roles": {"auditor": {"exempt": True}}}),
                    cfg)
    assert redact.exempted("a", ("auditor",)) and redact.exempted("a", ("bot", "auditor"))
    assert not redact.exempted("b", ("auditor",)) and not redact.exempted("a", ("bot",))
