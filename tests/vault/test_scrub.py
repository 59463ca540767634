"""The scrubber masks a value and its encodings in JSON values and in log records."""

from __future__ import annotations

import base64
import io
import logging
from urllib.parse import quote, quote_plus

from stile.vault.scrub import MASK, Scrubber

VALUE = "s3cr3t value/+=&"


def _forms() -> list[str]:
    raw = VALUE.encode()
    return [VALUE, quote(VALUE, safe=""), quote_plus(VALUE), base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("=")]


def test_every_encoding_is_masked_in_nested_json() -> None:
    s = Scrubber()
    s.update([VALUE])
    msg = {"error": {"message": " | ".join(_forms()), "data": [{"x": f"Bearer {VALUE}"}, 3, None]}}
    out = s.scrub(msg)
    text = repr(out)
    assert not any(form in text for form in _forms())
    assert out["error"]["data"][0]["x"] == f"Bearer {MASK}" and out["error"]["data"][1] == 3


def test_a_log_record_from_any_stile_logger_is_masked() -> None:
    s = Scrubber()
    s.update([VALUE])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        s.install()
        logging.getLogger("stile.upstream.http").warning("upstream said %s", VALUE)
        try:
            raise ValueError(base64.b64encode(VALUE.encode()).decode())
        except ValueError:
            logging.getLogger("stile.gateway").exception("boom")
    finally:
        s.uninstall()
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "upstream said [secret]" in text and "ValueError: [secret]" in text
    assert not any(form in text for form in _forms())


def test_an_empty_scrubber_changes_nothing() -> None:
    s = Scrubber()
    msg = {"result": {"text": VALUE}}
    assert s.scrub(msg) == msg and not s.active
