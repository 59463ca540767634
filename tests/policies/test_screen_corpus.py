"""The labelled screen corpus (bench/screen_corpus) is well formed and split honestly, and the screen keeps the
figures bench/README.md reports: well above the keyword list, false positives under the target.

The held-out split is measured after the model is frozen (34e238e, then 1548600: bench/README.md says what
changed between, from train data only); these thresholds are what the last measurement showed, with a little
slack: a guard against regressions, not something to tune against.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import pytest

from bench.screen_bench import POSITIVE, TRAIN_SPLITS, keyword_hit, load
from stile.policies.screen_rules import MODEL, scan

ROWS = load()
LABELS = {"description": {"poisoned", "benign"}, "result": {"injected", "clean"}}


def test_every_item_has_a_kind_a_label_a_text_a_source_and_a_split() -> None:
    assert len(ROWS) >= 7000
    for row in ROWS:
        assert row["label"] in LABELS[row["kind"]], row
        assert row["text"].strip() and row["source"].strip(), row
        assert row.get("split", "tuned") in (*TRAIN_SPLITS, "holdout"), row
    assert len({(r["kind"], r["text"]) for r in ROWS}) == len(ROWS)  # no duplicates


def test_the_hash_split_is_the_documented_one() -> None:
    """Corpus v2 items are held out by a hash of their text (one in three); BIPIA items by BIPIA's own split."""
    for row in ROWS:
        if row["file"] in ("real_descriptions", "real_results", "v2_authored"):
            held = int(hashlib.sha256(row["text"].encode()).hexdigest()[:8], 16) % 3 == 0
            assert row["split"] == ("holdout" if held else "train"), row
        elif row["file"] == "bipia_results":
            assert ("/test.jsonl" in row["source"]) == (row["split"] == "holdout"), row


def test_the_weights_were_fitted_on_the_train_split() -> None:
    assert MODEL is not None
    raw = json.loads(resources.files("stile.policies").joinpath("screen_weights.json").read_text(encoding="utf-8"))
    for kind in ("description", "result"):
        assert raw[kind]["fitted_on"] == "bench/screen_corpus train split"
        assert MODEL.bias[kind] < MODEL.threshold[kind]  # a text with no feature is never a hit


def _rates(kind: str, part: str) -> tuple[float, float, float]:
    items = [r for r in ROWS if r["kind"] == kind and r["part"] == part]
    pos = [r["text"] for r in items if r["label"] in POSITIVE]
    neg = [r["text"] for r in items if r["label"] not in POSITIVE]
    recall = sum(scan(t, kind).flagged for t in pos) / len(pos)  # type: ignore[arg-type]
    fpr = sum(scan(t, kind).flagged for t in neg) / len(neg)  # type: ignore[arg-type]
    baseline = sum(keyword_hit(t) for t in pos) / len(pos)
    return recall, fpr, baseline


@pytest.mark.parametrize(("kind", "part", "min_recall", "max_fpr"), [
    ("description", "train", 0.75, 0.003), ("result", "train", 0.35, 0.003),
    ("description", "holdout", 0.55, 0.005), ("result", "holdout", 0.22, 0.005)])
def test_the_screen_beats_the_keyword_list_at_a_low_false_positive_rate(kind: str, part: str, min_recall: float,
                                                                       max_fpr: float) -> None:
    recall, fpr, baseline = _rates(kind, part)
    assert recall >= min_recall and recall >= baseline + 0.15, (recall, baseline)
    assert fpr <= max_fpr, fpr


def test_the_shipped_weights_are_what_the_fit_script_makes_from_the_train_split() -> None:
    """Reproducible from the corpus; `fit_kind` is handed every row and reads only the train split."""
    pytest.importorskip("numpy")
    from bench.screen_fit import fit_kind

    shipped = json.loads(resources.files("stile.policies").joinpath("screen_weights.json").read_text(encoding="utf-8"))
    for kind in ("description", "result"):
        want = shipped[kind]
        got = fit_kind(ROWS, kind, want["l2"], want["target_fpr"], 2, 3000)
        assert got["threshold"] == pytest.approx(want["threshold"], abs=1e-3)
        assert set(got["weights"]) == set(want["weights"])  # type: ignore[arg-type]
