# ruff: noqa  (one-off corpus-building scripts and data, kept as they were run)
"""Build corpus v2 files into bench/screen_corpus (it was run once, before any rule was tuned).

How the committed files were made (MIRRORS: a directory of bare clones named owner+name/repo; WORK: scratch):
  python extract_descriptions.py $MIRRORS/modelcontextprotocol+servers/repo modelcontextprotocol/servers py,ts > $WORK/servers.jsonl
  python extract_descriptions.py $MIRRORS/github+github-mcp-server/repo github/github-mcp-server go > $WORK/ghmcp.jsonl
  python extract_descriptions.py $MIRRORS/awslabs+mcp/repo awslabs/mcp py > $WORK/aws.jsonl
  (later, appended: GongRzhe/Gmail-MCP-Server ts,js,py > gmail.jsonl; korotovsky/slack-mcp-server go > slack.jsonl)
  MIRRORS=... python extract_cisco.py > $WORK/cisco.jsonl
  MIRRORS=... WORK=... python build.py
  MIRRORS=... python extract_results.py 1500 > ../real_results.jsonl   (added later)
  python dedupe.py
"""
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

WORK = os.environ.get("WORK", "/tmp/screens")
MIRRORS = os.environ.get("MIRRORS", "/work/.mirror")
sys.path.insert(0, str(Path(__file__).parent))
from authored import B, C, I, P

OUT = str(Path(__file__).resolve().parent.parent)
def split(text):  # held out: one item in three, by a hash of its text
    return "holdout" if int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 3 == 0 else "train"
def w(path, rows):
    with open(f"{OUT}/{path}", "w", encoding="utf-8") as f:
        for r in rows: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(path, len(rows), {s: sum(r["split"] == s for r in rows) for s in ("train", "holdout")})
# real benign descriptions
real = []
for fn in ("servers", "ghmcp", "aws", "gmail", "slack"):
    for line in open(f"{WORK}/{fn}.jsonl"):
        r = json.loads(line)
        real.append({"kind": "description", "text": r["text"], "label": "benign", "source": r["source"], "split": split(r["text"])})
w("real_descriptions.jsonl", real)
au = []
for tech, t in P: au.append({"kind": "description", "text": t, "label": "poisoned", "source": f"stile-authored v2, technique: {tech}"})
for t in B: au.append({"kind": "description", "text": t, "label": "benign", "source": "stile-authored v2, real-doc phrasing trap"})
for tech, t in I: au.append({"kind": "result", "text": t, "label": "injected", "source": f"stile-authored v2, technique: {tech}"})
for t in C: au.append({"kind": "result", "text": t, "label": "clean", "source": "stile-authored v2, clean result trap"})
for line in open(f"{WORK}/cisco.jsonl"):
    r = json.loads(line)
    au.append({"kind": "description", **r})
for r in au: r["split"] = split(r["text"])
w("v2_authored.jsonl", au)
# BIPIA: clean contexts and the same contexts with an attack inserted (start, middle or end); BIPIA's own
# train/test split of contexts and of attacks becomes train/holdout
R = f"{MIRRORS}/microsoft+BIPIA/repo"
def show(p): return subprocess.run(["git", "-C", R, "show", f"HEAD:benchmark/{p}"], capture_output=True, text=True).stdout
rng = random.Random(15)
bip = []
for bsplit, ours in (("train", "train"), ("test", "holdout")):
    text_attacks = [(k, a) for k, v in json.loads(show(f"text_attack_{bsplit}.json")).items() for a in v]
    code_attacks = [(k, a) for k, v in json.loads(show(f"code_attack_{bsplit}.json")).items() for a in v]
    for task, attacks, cap in (("email", text_attacks, 50), ("table", text_attacks, 100), ("code", code_attacks, 50)):
        rows = [json.loads(l) for l in show(f"{task}/{bsplit}.jsonl").splitlines() if l.strip()]
        rng.shuffle(rows)
        for r in rows[:cap]:
            ctx = r["context"] if isinstance(r["context"], str) else "\n".join(r["context"])
            ctx = ctx[:4000]
            src = f"microsoft/BIPIA benchmark/{task}/{bsplit}.jsonl"
            bip.append({"kind": "result", "text": ctx, "label": "clean", "source": src, "split": ours})
            cat, attack = rng.choice(attacks)
            parts = ctx.split("\n") if "\n" in ctx else ctx.split(". ")
            where = rng.choice((0, len(parts) // 2, len(parts)))
            joiner = "\n" if "\n" in ctx else ". "
            text = joiner.join(parts[:where] + [attack] + parts[where:])
            bip.append({"kind": "result", "text": text, "label": "injected", "split": ours,
                        "source": f"{src} + {bsplit} attack '{cat}' inserted at {('start', 'middle', 'end')[(where > 0) + (where == len(parts))]}"})
w("bipia_results.jsonl", bip)
# then: python bench/screen_corpus/make/dedupe.py (no text both trained on and held out)
