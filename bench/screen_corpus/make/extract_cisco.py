# ruff: noqa  (one-off corpus-building scripts and data, kept as they were run)
"""The labelled fixtures of cisco-ai-defense/mcp-scanner tests/test_yara_rules_coverage.py (SAFE_/FP_: benign)."""
import ast
import json
import os
import subprocess

R = os.environ.get("MIRRORS", "/work/.mirror") + "/cisco-ai-defense+mcp-scanner/repo"
def show(f): return subprocess.run(["git","-C",R,"show",f"HEAD:{f}"],capture_output=True,text=True).stdout
src = show("tests/test_yara_rules_coverage.py")
for node in ast.parse(src).body:
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        n = node.targets[0].id
        try: v = ast.literal_eval(node.value)
        except Exception: continue
        if not isinstance(v, str): continue
        benign = n.startswith(("SAFE_", "FP_")) or n in ("SYSTEM_CRITICAL_FILE_PREFIX_ONLY", "DATA_EXFIL_GENERIC_TEMPLATE_UPLOAD")
        if v.lstrip().startswith("{"):
            try:
                d = json.loads(v); v = d.get("description") or json.dumps(d)
            except Exception: pass
        print(json.dumps({"text": v.strip(), "label": "benign" if benign else "poisoned", "source": f"cisco-ai-defense/mcp-scanner:tests/test_yara_rules_coverage.py {n}"}))
