"""The image definition (Dockerfile, .dockerignore, deploy/docker/): no Docker engine runs here, so the test
builds the image's file system under a temporary root: the build context as .dockerignore leaves it, then
every RUN step of every stage (the same shell commands, pip and all; absolute paths come only from variables,
which point into the root), then the entry point started as the image's numeric USER with everything read-only
but the data volume and /tmp, probed with the image's own HEALTHCHECK command and used by an MCP client.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mcp import Client

from tests.deploy.dockerfile import Dockerfile, Stage, assignments, context_files, expand, parse
from tests.support import REPO, free_port, stop, wait_http

DOCKERFILE = REPO / "Dockerfile"
IGNORE = REPO / ".dockerignore"
SKIP_DIRS = frozenset({".git", ".venv", "node_modules", "node22", "conf-legacy", "conf-modern", "everything",
                       "oauth", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"})


def _dockerfile() -> Dockerfile:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


def _stage_env(df: Dockerfile, stage: Stage, uid: int) -> dict[str, str]:
    """The stage's ARGs and ENVs, in order, values as written (absolute paths not yet re-rooted)."""
    env: dict[str, str] = {}
    for ins in stage.instructions:
        if ins.keyword == "ARG":
            env.update(assignments(ins, {**df.global_args, **env}))
            if "STILE_UID" in env:
                env["STILE_UID"] = str(uid)  # the image's user; the current one when the test is not root
        elif ins.keyword == "ENV":
            env.update(assignments(ins, {**env, "PATH": "$PATH"}))
    return env


def _reroot(value: str, root: Path) -> str:
    """Absolute paths of the image (colon-separated lists too) moved under `root`; `$PATH` stays the host's."""
    parts = []
    for part in value.split(":"):
        parts.append(str(root) + part if part.startswith("/") else part)
    return ":".join(parts)


def _python_for(uid: int) -> str:
    """A host interpreter standing in for the base image's `python` (3.11+, with venv), which `uid` can run."""
    names = ("python3.11", "python3.12", "python3.13", "python3")
    candidates = [shutil.which(n) for n in names] + [f"{d}/{n}" for d in ("/usr/local/bin", "/usr/bin") for n in names]
    candidates.append(getattr(sys, "_base_executable", sys.executable))
    for cand in filter(None, candidates):
        real = Path(cand).resolve()
        if not real.is_file():
            continue
        probe = subprocess.run([str(real), "-c", "import sys, venv, ensurepip; print(sys.version_info >= (3, 11), "
                                "sys.base_prefix)"], capture_output=True, text=True)
        ok, _, prefix = probe.stdout.strip().partition(" ")
        if probe.returncode or ok != "True":
            continue
        if uid == os.getuid() or all(_others_can_enter(p) for p in (real, Path(prefix))):
            return str(real)
    pytest.fail("no Python >= 3.11 with venv and ensurepip that the image's user can run (install python3-venv)")


def _others_can_enter(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


@dataclass
class Image:
    root: Path
    env: dict[str, str]          # the runtime stage's environment, re-rooted
    uid: int
    entrypoint: list[str]
    healthcheck: list[str]
    workdir: Path
    build_log: str

    def run_as_user(self) -> dict[str, object]:
        if os.getuid() != 0:
            return {}
        return {"user": self.uid, "group": self.uid, "extra_groups": [], "umask": 0o027}


def _sh(command: str, *, cwd: Path, env: dict[str, str], log: list[str]) -> None:
    proc = subprocess.run(["sh", "-ec", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
    log.append(f"$ {command}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    assert proc.returncode == 0, "\n".join(log)


def _copy(ins_rest: str, context: Path, workdir: Path, root: Path, env: dict[str, str]) -> None:
    *sources, dest = [expand(w, env) for w in ins_rest.split()]
    target = Path(_reroot(dest, root)) if dest.startswith("/") else workdir / dest
    for src in sources:
        origin = context / src.rstrip("/")
        assert origin.exists(), f"COPY {src}: not in the build context (.dockerignore?)"
        if origin.is_dir():
            shutil.copytree(origin, target if src.endswith("/") or len(sources) == 1 else target / origin.name,
                            dirs_exist_ok=True)
        else:
            into = target / origin.name if dest.endswith("/") or len(sources) > 1 else target
            into.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, into)


def _build(root: Path) -> Image:
    df = _dockerfile()
    uid = 10001 if os.getuid() == 0 else os.getuid()
    context = root.parent / "context"
    for rel in context_files(REPO, IGNORE.read_text(encoding="utf-8"), SKIP_DIRS):
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    hostbin = root.parent / "hostbin"  # the base image's `python` on PATH
    hostbin.mkdir()
    python = _python_for(uid)
    (hostbin / "python").symlink_to(python)
    base_path = f"{root}/usr/local/bin:{hostbin}:/usr/local/bin:/usr/bin:/bin"
    # the machine's own settings (proxy, PIP_CERT, an index) stay; this checkout's Python environment goes
    host = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "STILE_", "XDG_"))}
    log: list[str] = []
    env: dict[str, str] = {}
    workdir = root
    for stage in df.stages:
        raw = _stage_env(df, stage, uid)
        env = {k: _reroot(v, root) if k != "PATH" else _reroot(v, root).replace("$PATH", base_path)
               for k, v in raw.items()}
        env.setdefault("PATH", base_path)
        workdir = root
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                workdir = Path(_reroot(expand(ins.rest, raw), root))
                workdir.mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "COPY":
                flags, rest = ins.flags_and_args()
                if "from" in flags:  # the venv is not relocatable: it must land where it was built
                    src, dest = rest.split()
                    assert src == dest, f"COPY --from={flags['from']} {src} {dest}: the venv must keep its path"
                    assert Path(_reroot(src, root)).is_dir(), f"COPY --from: {src} was not built"
                else:
                    _copy(rest, context, workdir, root, raw)
            elif ins.keyword == "RUN":
                _, command = ins.flags_and_args()
                _sh(command, cwd=workdir, env={**host, **env}, log=log)
    runtime = df.stages[-1]
    (root / "tmp").mkdir(exist_ok=True)
    return Image(root=root, env=env, uid=uid, entrypoint=runtime.one("ENTRYPOINT").exec_form()
                 + runtime.one("CMD").exec_form(), healthcheck=runtime.one("HEALTHCHECK").exec_form(),
                 workdir=workdir, build_log="\n".join(log))


def _read_only(root: Path, writable: list[Path], uid: int) -> None:
    """readOnlyRootFilesystem: nothing under `root` is writable but the volumes (owned by the image's user)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            if not p.is_symlink():
                p.chmod(p.stat().st_mode & ~0o222)
    root.chmod(root.stat().st_mode & ~0o222)
    for w in writable:
        w.chmod(0o750 if w.name != "tmp" else 0o1777)
        if os.getuid() == 0:
            os.chown(w, uid, uid)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    base = Path(tempfile.mkdtemp(prefix="stile-image-"))
    base.chmod(0o755)  # the image's user must reach the venv below it
    root = base / "root"
    root.mkdir()
    try:
        built = _build(root)
        config = (REPO / "deploy" / "docker" / "stile.yaml").read_text(encoding="utf-8")
        for prefix in ("/var/lib/stile", "/opt/stile"):
            config = config.replace(prefix, str(root) + prefix)
        config_path = Path(built.env["STILE_CONFIG"])
        config_path.write_text(config, encoding="utf-8")
        _read_only(root, [Path(built.env["STILE_DATA"]), root / "tmp"], built.uid)
        yield built
    finally:
        for dirpath, dirnames, _ in os.walk(base):
            for name in dirnames:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    p.chmod(0o755)
        base.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def _start(image: Image, port: int, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = {**image.env, "STILE_HOST": "127.0.0.1", "STILE_PORT": str(port), **(env or {})}
    exe = shutil.which(image.entrypoint[0], path=full["PATH"])
    assert exe, f"{image.entrypoint[0]} is not on the image's PATH {full['PATH']}"
    with log.open("wb") as out:
        return subprocess.Popen([exe, *image.entrypoint[1:]], cwd=image.workdir, env=full, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                **image.run_as_user())  # type: ignore[call-overload]


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


async def _list_files(url: str, mode: str) -> tuple[set[str], object]:
    async with Client(url, mode=mode) as client:  # type: ignore[arg-type]
        tools = {t.name for t in (await client.list_tools()).tools}
        return tools, (await client.call_tool("files__list_files", {})).structured_content


def test_the_installed_image_serves_as_its_user_with_a_read_only_root(image: Image, tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "stile.log"
    proc = _start(image, port, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", proc, deadline_s=60, log=log)
        # `stile-entrypoint` execs `stile`: the gateway itself runs as the image's numeric user
        assert _uid_of(proc.pid) == image.uid
        health = subprocess.run(image.healthcheck, env={**image.env, "STILE_PORT": str(port)}, capture_output=True,
                                text=True, timeout=30, **image.run_as_user())  # type: ignore[call-overload]
        assert health.returncode == 0, health.stderr
        for mode in ("legacy", "2026-07-28"):  # both protocol eras
            tools, listed = asyncio.run(_list_files(f"http://127.0.0.1:{port}/mcp/files", mode))
            assert tools == {"files__list_files", "files__read_file"}, mode
            assert "bin/stile" in str(listed), mode  # FILES_ROOT is the venv, read-only and readable
    finally:
        stop(proc)
    printed = log.read_text(errors="replace")
    # a graceful stop on SIGTERM (uvicorn re-raises the signal once shut down, hence -15)
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in printed, printed
    assert "Traceback" not in printed and "Permission denied" not in printed, printed
    data = Path(image.env["STILE_DATA"])
    assert (data / "stile.db").is_file(), printed  # state and audit trail on the volume ...
    assert (data / "audit-spool" / "wal").is_dir(), printed  # ... and the write-ahead log of acknowledged calls


def test_the_images_user_can_write_only_the_data_volume_and_tmp(image: Image) -> None:
    probe = ("import sys\nfor d in sys.argv[1:]:\n    try:\n        open(d + '/probe', 'w').close()\n"
             "        print(d, 'writable')\n    except OSError:\n        print(d, 'read-only')\n")
    places = {"venv": image.env["VIRTUAL_ENV"], "config": str(Path(image.env["STILE_CONFIG"]).parent),
              "root": str(image.root), "bin": str(image.root / "usr/local/bin"), "data": image.env["STILE_DATA"],
              "tmp": image.env["TMPDIR"]}
    proc = subprocess.run([f"{image.env['VIRTUAL_ENV']}/bin/python", "-c", probe, *places.values()],
                          env=image.env, capture_output=True, text=True, timeout=30,
                          **image.run_as_user())  # type: ignore[call-overload]
    assert proc.returncode == 0, proc.stderr
    seen = dict(line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    assert {name: seen[path] for name, path in places.items()} == {
        "venv": "read-only", "config": "read-only", "root": "read-only", "bin": "read-only",
        "data": "writable", "tmp": "writable"}


def test_the_health_check_fails_when_nothing_answers(image: Image) -> None:
    health = subprocess.run(image.healthcheck, env={**image.env, "STILE_PORT": str(free_port())},
                            capture_output=True, text=True, timeout=30)
    assert health.returncode != 0
    assert "Connection refused" in health.stderr and "Traceback" not in health.stderr, health.stderr


def test_without_a_mounted_config_the_entry_point_says_where_to_put_one(image: Image, tmp_path: Path) -> None:
    log = tmp_path / "stile.log"
    proc = _start(image, free_port(), log, env={"STILE_CONFIG": str(image.root / "etc/stile/missing.yaml")})
    assert proc.wait(timeout=30) == 64
    printed = log.read_text()
    assert "no readable config at" in printed and "mount one there" in printed, printed
    assert "Traceback" not in printed


def test_a_config_that_writes_beside_itself_is_refused_clearly(image: Image, tmp_path: Path) -> None:
    """Relative paths resolve beside the config, here the read-only config mount: the SQLite state database (and
    the audit write-ahead log beside it) cannot be created, and Stile stops with a clear error naming it."""
    config = tmp_path / "conf"
    config.mkdir()
    (config / "stile.yaml").write_text("virtual_servers: {}\nstate: sqlite:///stile.db\n", encoding="utf-8")
    config.chmod(0o555)
    tmp_path.chmod(0o755)
    tmp_path.parent.chmod(tmp_path.parent.stat().st_mode | 0o005)
    tmp_path.parent.parent.chmod(tmp_path.parent.parent.stat().st_mode | 0o005)
    log = tmp_path / "stile.log"
    proc = _start(image, free_port(), log, env={"STILE_CONFIG": str(config / "stile.yaml")})
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        stop(proc)
    printed = log.read_text(errors="replace")
    assert rc is not None and rc != 0, printed
    assert (f"the state database {config / 'stile.db'} cannot be created: {config} is not writable by this user"
            in printed), printed
    assert "Traceback" not in printed, printed


def test_the_entry_point_runs_any_other_stile_command(image: Image) -> None:
    """`docker run IMAGE check --offline --config /etc/stile/stile.yaml`: the image is also the CLI."""
    exe = shutil.which(image.entrypoint[0], path=image.env["PATH"])
    assert exe
    proc = subprocess.run([exe, "check", "--offline", "--config", image.env["STILE_CONFIG"]], cwd=image.workdir,
                          env={**image.env, "COLUMNS": "200", "NO_COLOR": "1"}, capture_output=True, text=True,
                          timeout=60, **image.run_as_user())  # type: ignore[call-overload]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "files" in proc.stdout
