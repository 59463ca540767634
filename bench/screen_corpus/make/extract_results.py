# ruff: noqa  (one-off corpus-building scripts and data, kept as they were run)
"""Real clean tool results: paragraphs of Markdown docs from public MCP server repos (what a file-reading or
fetch tool returns)."""
import hashlib
import json
import os
import re
import subprocess
import sys

REPOS = [("modelcontextprotocol+servers", "modelcontextprotocol/servers"), ("github+github-mcp-server", "github/github-mcp-server"),
         ("awslabs+mcp", "awslabs/mcp"), ("GongRzhe+Gmail-MCP-Server", "GongRzhe/Gmail-MCP-Server"),
         ("korotovsky+slack-mcp-server", "korotovsky/slack-mcp-server")]
out, seen = [], set()
for mirror, name in REPOS:
    repo = os.environ.get("MIRRORS", "/work/.mirror") + f"/{mirror}/repo"
    files = [f for f in subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True,
                                       text=True).stdout.split("\n") if f.endswith(".md") and "CHANGELOG" not in f]
    for f in files:
        text = subprocess.run(["git", "-C", repo, "show", f"HEAD:{f}"], capture_output=True, text=True, errors="replace").stdout
        for para in re.split(r"\n\s*\n", text):
            para = para.strip()
            if not 160 <= len(para) <= 3000:
                continue
            key = " ".join(para.lower().split())
            if key in seen:
                continue
            seen.add(key)
            out.append({"kind": "result", "text": para, "label": "clean", "source": f"{name}:{f} (paragraph)"})
out.sort(key=lambda r: hashlib.sha256(r["text"].encode()).hexdigest())
for r in out[:int(sys.argv[1])]:
    r["split"] = "holdout" if int(hashlib.sha256(r["text"].encode()).hexdigest()[:8], 16) % 3 == 0 else "train"
    print(json.dumps(r, ensure_ascii=False))
print(len(out), file=sys.stderr)
