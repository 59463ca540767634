"""Masking secret values wherever Stile might repeat them: upstream answers and log records.

A `Scrubber` holds the current secret values and their encodings (standard and URL-safe base64, with and
without padding, and percent-encoding); `scrub_text` replaces each with `[secret]`. Values shorter than
`MIN_LEN` characters are not masked (masking `a` would mangle every text; such values are refused as
header secrets anyway by being too guessable to matter). As a `logging.Filter` it rewrites records.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "[secret]"
MIN_LEN = 4


def encodings(value: str) -> set[str]:
    raw = value.encode("utf-8")
    forms = {value, quote(value, safe=""), quote_plus(value), quote(value)}
    for enc in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
        forms.add(enc)
        forms.add(enc.rstrip("="))
    return {f for f in forms if len(f) >= MIN_LEN}


class Scrubber(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._needles: tuple[str, ...] = ()

    def update(self, values: list[str]) -> None:
        forms: set[str] = set()
        for value in values:
            forms |= encodings(value)
        self._needles = tuple(sorted(forms, key=len, reverse=True))  # longest first: no partial leftovers

    @property
    def active(self) -> bool:
        return bool(self._needles)

    def scrub_text(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, MASK)
        return text

    def scrub(self, value: Any) -> Any:
        """A JSON value with every string scrubbed (new containers only where something changed)."""
        if isinstance(value, str):
            return self.scrub_text(value)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if self._needles:
            text = record.getMessage()
            clean = self.scrub_text(text)
            if clean != text:
                record.msg, record.args = clean, None
            if record.exc_info and record.exc_text is None:
                record.exc_text = self.scrub_text(logging.Formatter().formatException(record.exc_info))
            elif record.exc_text:
                record.exc_text = self.scrub_text(record.exc_text)
        return True

    def install(self) -> None:
        """Filter every handler of the root logger and the `stile` logger (records logged by `stile.*`)."""
        for logger in (logging.getLogger(), logging.getLogger("stile")):
            if self not in logger.filters:
                logger.addFilter(self)
            for handler in logger.handlers:
                if self not in handler.filters:
                    handler.addFilter(self)

    def uninstall(self) -> None:
        for logger in (logging.getLogger(), logging.getLogger("stile")):
            logger.removeFilter(self)
            for handler in logger.handlers:
                handler.removeFilter(self)
