"""The labelled screen corpus (bench/screen_corpus) is well formed, and the rules keep beating the keyword baseline."""

from __future__ import annotations

import pytest

from bench.screen_bench import POSITIVE, keyword_hit, load
from stile.policies.screen_rules import scan

ROWS = load()
LABELS = {"description": {"poisoned", "benign"}, "result": {"injected", "clean"}}


def test_every_item_has_a_kind_a_label_a_text_and_a_source() -> None:
    assert len(ROWS) >= 200
    for row in ROWS:
        assert row["label"] in LABELS[row["kind"]], row
        assert row["text"].strip() and row["source"].strip(), row
        assert row.get("split", "tuned") in ("tuned", "holdout")
    assert len({(r["kind"], r["text"]) for r in ROWS}) == len(ROWS)  # no duplicates


@pytest.mark.parametrize(("kind", "split"), [("description", "tuned"), ("result", "tuned"), ("description", "holdout")])
def test_the_rules_beat_the_keyword_list_at_a_low_false_positive_rate(kind: str, split: str) -> None:
    items = [r for r in ROWS if r["kind"] == kind and r.get("split", "tuned") == split]
    pos = [r["text"] for r in items if r["label"] in POSITIVE]
    neg = [r["text"] for r in items if r["label"] not in POSITIVE]
    recall = sum(scan(t, kind).flagged for t in pos) / len(pos)  # type: ignore[arg-type]
    fpr = sum(scan(t, kind).flagged for t in neg) / len(neg)  # type: ignore[arg-type]
    baseline = sum(keyword_hit(t) for t in pos) / len(pos)
    assert recall >= baseline + 0.3, (recall, baseline)
    assert fpr <= 0.03, fpr
