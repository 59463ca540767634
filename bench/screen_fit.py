"""Fit the screen's linear model (`src/stile/policies/screen_weights.json`) on the TRAIN split only.

For each kind (description, result): the features of `screen_rules.text_features` for every train item of
`bench/screen_corpus` (splits `tuned`, `v1-holdout`, `train`; never `holdout`), features seen in fewer than
`--min-count` train items dropped, an L2-regularised logistic regression with balanced class weights
(full-batch gradient descent, NumPy at fit time only), then the threshold: the lowest score that keeps the
false-positive rate on the train negatives at or under `--target-fpr`. The held-out split is not read.

Run: ``PYTHONPATH=src python -m bench.screen_fit [--target-fpr 0.002] [--l2 0.3]``, then
``python -m bench.screen_bench`` to measure.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

from bench.screen_bench import POSITIVE, load
from stile.policies import screen_rules
from stile.policies.screen_rules import THRESHOLD, text_features

OUT = Path(screen_rules.__file__).parent / "screen_weights.json"


def fit_kind(rows: list[dict[str, str]], kind: str, l2: float, target_fpr: float, min_count: int,
             steps: int) -> dict[str, object]:
    items = [r for r in rows if r["kind"] == kind and r["part"] == "train"]
    feats = [text_features(r["text"], kind)[2] for r in items]  # type: ignore[arg-type]
    counts = Counter(f for fs in feats for f in set(fs))
    vocab = sorted(f for f, n in counts.items() if n >= min_count)
    index = {f: i for i, f in enumerate(vocab)}
    x = np.zeros((len(items), len(vocab)))
    for row, fs in enumerate(feats):
        for f in fs:
            if f in index:
                x[row, index[f]] = 1.0
    y = np.array([1.0 if r["label"] in POSITIVE else 0.0 for r in items])
    pos, neg = y.sum(), len(y) - y.sum()
    sample = np.where(y == 1, len(y) / (2 * pos), len(y) / (2 * neg))
    w = np.zeros(len(vocab))
    b = 0.0
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    for step in range(1, steps + 1):  # Adam on the weighted log loss + l2 * |w|^2 / 2
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = sample * (p - y) / len(y)
        gw = x.T @ g + l2 * w / len(y)
        gb = g.sum()
        m_w = 0.9 * m_w + 0.1 * gw
        v_w = 0.999 * v_w + 0.001 * gw * gw
        m_b = 0.9 * m_b + 0.1 * gb
        v_b = 0.999 * v_b + 0.001 * gb * gb
        lr = 0.05 * math.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
        w -= lr * m_w / (np.sqrt(v_w) + 1e-8)
        b -= lr * m_b / (math.sqrt(v_b) + 1e-8)
    w, b = np.round(w, 4), round(float(b), 4)  # what the JSON keeps: the threshold is placed on these
    w[np.abs(w) < 1e-3] = 0.0
    scores = x @ w + b
    by_rules = np.array([text_features(r["text"], kind)[1] >= THRESHOLD for r in items])  # type: ignore[arg-type]
    # the screen flags what the rules flag OR what the model scores at the threshold: the threshold spends the
    # false positives the target leaves after the rules' own, on negatives the rules do not flag
    allowed = math.floor(target_fpr * neg) - int(by_rules[y == 0].sum())
    rest = np.sort(scores[(y == 0) & ~by_rules])[::-1]
    threshold = float(rest[max(allowed, 0)]) + 1e-4 if len(rest) > max(allowed, 0) else 0.0
    threshold = max(threshold, 0.0)  # never below p = 0.5
    flagged = by_rules | (scores >= threshold)
    recall = float(flagged[y == 1].mean())
    fpr = float(flagged[y == 0].mean())
    print(f"{kind:12} train items {len(items)} ({int(pos)} positive), features {len(vocab)}, "
          f"threshold {threshold:.3f}: train recall {recall:.1%}, train FPR {fpr:.2%}")
    weights = {f: float(v) for f, v in zip(vocab, w, strict=True) if v != 0.0}
    return {"bias": b, "threshold": round(threshold + 5e-5, 4), "weights": weights,
            "fitted_on": "bench/screen_corpus train split", "target_fpr": target_fpr, "l2": l2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--target-fpr", type=float, default=0.002)
    parser.add_argument("--l2", type=float, default=0.3)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    screen_rules.MODEL = None  # features do not depend on the model; make that explicit
    rows = [r for r in load() if r["part"] == "train"]
    model = {kind: fit_kind(rows, kind, args.l2, args.target_fpr, args.min_count, args.steps)
             for kind in ("description", "result")}
    OUT.write_text(json.dumps(model, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
