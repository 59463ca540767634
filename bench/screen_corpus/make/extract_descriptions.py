# ruff: noqa  (one-off corpus-building scripts and data, kept as they were run)
"""Extract tool/param descriptions from MCP server repos (git mirrors)."""
import ast
import json
import re
import subprocess
import sys


def files(repo, exts):
    out = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", "HEAD"], capture_output=True, text=True).stdout.split("\n")
    return [f for f in out if f.endswith(exts) and "node_modules" not in f and "test" not in f.lower()]

def show(repo, f):
    return subprocess.run(["git", "-C", repo, "show", f"HEAD:{f}"], capture_output=True, text=True, errors="replace").stdout

def py_descs(src):
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            decs = [ast.unparse(d) for d in node.decorator_list]
            if any("tool" in d or "prompt" in d or "resource" in d for d in decs):
                doc = ast.get_docstring(node)
                if doc: yield doc
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "description" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    yield kw.value.value

JS_STR = r'''(?:"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`(?:[^`\\$]|\\.)*`)'''
JS_DESC = re.compile(r'(?:\bdescription\s*:\s*|\.describe\(\s*)(' + JS_STR + r'(?:\s*\+\s*' + JS_STR + r')*)')
GO_STR = r'''(?:"(?:[^"\\\n]|\\.)*"|`[^`]*`)'''
GO_DESC = re.compile(r'(?:WithDescription\(|Description\(|Description:\s*)(?:t\(\s*"[A-Z0-9_]+"\s*,\s*)?(' + GO_STR + r'(?:\s*\+\s*' + GO_STR + r')*)')
PIECE = re.compile(JS_STR)

def unquote(lit):
    parts = []
    for m in re.finditer(JS_STR + '|' + GO_STR, lit):
        s = m.group(0)
        body = s[1:-1]
        if s[0] != '`':
            try:
                body = json.loads('"' + body.replace("\\'", "'").replace('"', '\\"').replace('\\\\"', '\\"') + '"') if s[0] == "'" else json.loads(s)
            except Exception:
                body = body.replace("\\n", "\n").replace('\\"', '"')
        parts.append(body)
    return "".join(parts)

def main(repo, name, exts):
    seen = set()
    for f in files(repo, tuple(exts.split(","))):
        src = show(repo, f)
        if f.endswith(".py"):
            it = py_descs(src)
        elif f.endswith(".go"):
            it = (unquote(m.group(1)) for m in GO_DESC.finditer(src))
        else:
            it = (unquote(m.group(1)) for m in JS_DESC.finditer(src))
        for d in it:
            d = d.strip()
            key = " ".join(d.lower().split())
            if len(d) < 20 or len(d) > 6000 or key in seen:
                continue
            seen.add(key)
            print(json.dumps({"text": d, "source": f"{name}:{f}"}, ensure_ascii=False))

main(sys.argv[1], sys.argv[2], sys.argv[3])
