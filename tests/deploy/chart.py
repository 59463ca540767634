"""Render deploy/helm/stile with Helm's own engine: `helm-python-sdk` binds Helm v4's Go SDK (template rendering
and `helm lint` without a helm binary; installed with the dev extras, so `make test` and CI have it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support import REPO

try:
    import helm_python
except ImportError as exc:  # fail loudly: the chart is never "tested" by skipping
    raise ImportError("helm-python-sdk is missing: `pip install -e '.[dev]'` (make install) brings Helm's "
                      "engine for the chart tests") from exc

CHART = REPO / "deploy" / "helm" / "stile"
RELEASE, NAMESPACE = "gw", "mcp"
FULLNAME = f"{RELEASE}-stile"


def render(values: dict[str, Any] | None = None, chart: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text, as `helm template gw deploy/helm/stile -n mcp` prints it."""
    with helm_python.Chart.load(str(chart)) as loaded:
        return loaded.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def notes(values: dict[str, Any] | None = None) -> str:
    return render(values)["stile/templates/NOTES.txt"]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind]
    return found


def lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return helm_python.lint(str(CHART), values, strict=True)


RenderError = helm_python.HelmError
