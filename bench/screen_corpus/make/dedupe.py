# ruff: noqa  (one-off corpus-building scripts and data, kept as they were run)
"""Drop repeated (kind, text) items from the corpus files: the first occurrence wins, files in this order and,
within a file, train items before held-out ones (so a text BIPIA has in both of its splits stays in train).

Run from the repository root: ``python bench/screen_corpus/make/dedupe.py``.
"""

import json
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent
ORDER = ("descriptions", "results", "holdout", "v2_authored", "real_descriptions", "bipia_results", "real_results")
seen: set[tuple[str, str]] = set()
for name in ORDER:
    path = CORPUS / f"{name}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep: list[dict[str, str]] = []
    for row in sorted(rows, key=lambda r: r.get("split") == "holdout"):  # stable: train first
        key = (row["kind"], row["text"])
        if key not in seen:
            seen.add(key)
            keep.append(row)
    order = {id(r): i for i, r in enumerate(rows)}
    keep.sort(key=lambda r: order[id(r)])
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
    print(f"{name}: {len(rows)} -> {len(keep)}")
