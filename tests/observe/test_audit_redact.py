"""`audit.arguments: redacted` masks PII and secrets inside values with the redact policy's detectors."""

from __future__ import annotations

from stile.observe.audit import arguments_for


def test_redacted_arguments_mask_detected_values_inside_strings_and_keep_the_rest() -> None:
    args = {"note": "mail ada@example.com, card 4111 1111 1111 1111, key=ghp_" + "A1b2" * 9,
            "items": [{"iban": "DE89 3704 0044 0532 0130 00"}], "count": 3, "title": "password is hunter2"}
    assert arguments_for("redacted", args) == {
        "note": "mail [REDACTED:email], card [REDACTED:card], key=[REDACTED:github_token]",
        "items": [{"iban": "[REDACTED:iban]"}], "count": 3, "title": "password is hunter2"}


def test_secret_keys_and_whole_secret_values_are_still_masked() -> None:
    assert arguments_for("redacted", {"api_key": "x", "v": "AKIAIOSFODNN7EXAMPLE"}) == {"api_key": "***", "v": "***"}
