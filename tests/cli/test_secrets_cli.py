"""`stile secrets`: values only from stdin or a file, never printed; clear errors, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from stile.vault.keyring import new_key_text
from tests.support import REPO

KEY = new_key_text()


def _run(tmp: Path, *args: str, stdin: str = "", key: str | None = KEY) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILE_")}
    if key is not None:
        env["STILE_MASTER_KEY"] = key
    return subprocess.run([sys.executable, "-m", "stile", "secrets", *args, "--state", f"sqlite:///{tmp / 's.db'}"],
                          input=stdin, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)


def test_set_list_rotate_delete_never_print_the_value(tmp_path: Path) -> None:
    value = "v4lue-" + os.urandom(8).hex()
    outputs = [_run(tmp_path, "set", "gh", stdin=value + "\n")]
    assert outputs[-1].returncode == 0 and "version 1" in outputs[-1].stdout
    file = tmp_path / "new"
    file.write_text(value + "-2")
    outputs.append(_run(tmp_path, "rotate", "gh", "--from-file", str(file)))
    assert "version 2" in outputs[-1].stdout
    outputs.append(_run(tmp_path, "list"))
    assert outputs[-1].stdout.split("\n")[1].split()[:3] == ["gh", "2", "2"]
    outputs.append(_run(tmp_path, "set", "gh", stdin="x"))
    assert outputs[-1].returncode == 1 and "already exists" in outputs[-1].stderr
    outputs.append(_run(tmp_path, "delete", "gh"))
    assert outputs[-1].returncode == 0
    outputs.append(_run(tmp_path, "delete", "gh"))
    assert outputs[-1].returncode == 1 and "no secret named" in outputs[-1].stderr
    for out in outputs:
        assert value not in out.stdout + out.stderr and "Traceback" not in out.stderr


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    cases = [
        (_run(tmp_path, "set", "gh", stdin=""), "empty value"),
        (_run(tmp_path, "set", "gh", stdin="v", key=None), "no vault master key"),
        (_run(tmp_path, "set", "gh", stdin="v", key="short"), "STILE_MASTER_KEY: not valid base64"),
        (_run(tmp_path, "set", "bad name", stdin="v"), "bad secret name"),
        (_run(tmp_path, "set", "stile.signing-key", stdin="v"), "Stile's own"),
        (_run(tmp_path, "rotate", "nope", stdin="v"), "no secret named"),
        (_run(tmp_path, "rewrap"), "give the new master key"),
        (_run(tmp_path, "set", "gh", "--from-file", str(tmp_path / "missing")), "cannot read"),
    ]
    for done, message in cases:
        assert done.returncode != 0 and message in done.stderr, (message, done.stderr)
        assert "Traceback" not in done.stderr


def test_rewrap_then_only_the_new_key_reads(tmp_path: Path) -> None:
    assert _run(tmp_path, "set", "gh", stdin="value-1").returncode == 0
    new = new_key_text()
    key_file = tmp_path / "new.key"
    key_file.write_text(new)
    done = _run(tmp_path, "rewrap", "--new-key-file", str(key_file))
    assert done.returncode == 0 and "re-wrapped 1 data keys" in done.stdout, done.stderr
    assert _run(tmp_path, "rotate", "gh", stdin="value-2", key=new).returncode == 0
    stale = _run(tmp_path, "rewrap", "--new-key-file", str(key_file))
    assert stale.returncode == 0 and "re-wrapped 0" in stale.stdout  # already under the new key: nothing to do


def test_serve_without_a_master_key_for_referenced_secrets_is_a_one_line_error(tmp_path: Path) -> None:
    cfg = tmp_path / "stile.yaml"
    cfg.write_text("upstreams:\n  u: {url: 'http://127.0.0.1:9/mcp', headers: {X-Key: '${secret:k}'}}\n"
                   "virtual_servers: {v: {}}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STILE_")}
    done = subprocess.run([sys.executable, "-m", "stile", "serve", "--config", str(cfg), "--port", "0"],
                          capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert done.returncode != 0
    assert "error: no vault master key" in done.stderr and "Traceback" not in done.stderr
