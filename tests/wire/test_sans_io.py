"""The wire layer stays sans-I/O: no module under src/stile/wire imports an event loop or HTTP stack."""

from __future__ import annotations

import ast
from pathlib import Path

import stile.wire

WIRE_DIR = Path(stile.wire.__file__).resolve().parent
FORBIDDEN = {"asyncio", "aiohttp", "uvicorn", "anyio", "httpx", "httpx2", "starlette", "trio", "uvloop", "httptools"}


def imported_roots(source: str, module: str) -> set[str]:
    """Top-level package of every import in `source` (relative imports resolved against `module`)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            roots.add(target.split(".")[0])
            if target.split(".")[0] == "stile":
                roots.update(f"stile:{target}.{a.name}" for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            roots.add(node.args[0].value.split(".")[0])
    return roots


def wire_modules() -> list[Path]:
    return sorted(WIRE_DIR.rglob("*.py"))


def test_the_wire_package_has_modules_to_check() -> None:
    names = {p.stem for p in wire_modules()}
    assert {"jsonrpc", "sse", "headers", "errors", "eras"} <= names


def test_no_wire_module_imports_an_event_loop_or_http_library() -> None:
    offenders: list[str] = []
    for path in wire_modules():
        module = "stile.wire." + path.stem if path.stem != "__init__" else "stile.wire"
        bad = imported_roots(path.read_text(encoding="utf-8"), module) & FORBIDDEN
        offenders.extend(f"{path.name} imports {name}" for name in sorted(bad))
    assert not offenders, offenders


def test_wire_modules_import_nothing_from_stile_outside_the_wire_package() -> None:
    offenders: list[str] = []
    for path in wire_modules():
        module = "stile.wire." + path.stem
        for ref in imported_roots(path.read_text(encoding="utf-8"), module):
            if ref.startswith("stile:") and not ref.startswith("stile:stile.wire"):
                offenders.append(f"{path.name}: {ref[6:]}")
    assert not offenders, offenders


def test_the_import_scanner_sees_the_import_forms_it_must_forbid() -> None:
    src = "import asyncio\nfrom aiohttp import web\nimport anyio.abc as a\nx = __import__('uvicorn')\n"
    assert {"asyncio", "aiohttp", "anyio", "uvicorn"} <= imported_roots(src, "stile.wire.x")
    assert "stile" in imported_roots("from ..core import gateway\n", "stile.wire.x")
