"""The README cannot drift: every command and option of its command table exists in the real CLI, and its
"first hour" block runs, line by line, exactly as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from stile.cli.main import app
from tests.support import CHILD_PYTHONPATH, REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
CLI = typer.main.get_command(app)


def command_table() -> list[str]:
    """The first cell of each row of the table under `## Commands`."""
    section = README.split("## Commands", 1)[1].split("\n\n", 2)[1]
    return [line.split(" | ", 1)[0].lstrip("| ") for line in section.splitlines() if line.startswith("| `")]


def invocations() -> list[tuple[str, list[str], set[str]]]:
    """(README text, command path, options) for every `stile ...` in the table; a backticked span without
    `stile` adds options to the command before it (`(or --file audit.jsonl, ...)`)."""
    found: list[tuple[str, list[str], set[str]]] = []
    for cell in command_table():
        for span in re.findall(r"`([^`]+)`", cell):
            options = set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", span))
            if span.startswith("stile "):
                words = [w for w in span.split()[1:] if re.fullmatch(r"[a-z]+(?:-[a-z]+)*", w)]
                found.append((span, words, options))
            else:
                assert found, f"options before any command in {cell!r}"
                found[-1][2].update(options)
    return found


def is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)  # typer's own click: no isinstance(click.Group)


def resolve(words: list[str]) -> tuple[Any, list[str]]:
    """The (click) command a README command names (its leading sub-command words) and the path used."""
    command: Any = CLI
    path: list[str] = []
    for word in words:
        if not is_group(command) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return command, path


def options_of(command: Any) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")}


def leaves(group: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for name, command in group.commands.items():
        out |= leaves(command, (*prefix, name)) if is_group(command) else {(*prefix, name)}
    return out


def test_the_table_is_found() -> None:
    assert len(invocations()) >= 12


@pytest.mark.parametrize(("text", "words", "options"), invocations(), ids=[i[0][:60] for i in invocations()])
def test_every_documented_command_and_option_exists(text: str, words: list[str], options: set[str]) -> None:
    command, path = resolve(words)
    if not path:  # `stile --version`
        assert options <= options_of(CLI) | {"--help"}, text
        return
    assert not is_group(command), f"{text!r} names the group {path}, not a command"
    unknown = options - options_of(command) - {"--help"}
    assert not unknown, f"{text!r}: `stile {' '.join(path)}` has no option {sorted(unknown)}"


def test_every_command_of_the_cli_is_in_the_table() -> None:
    documented = {tuple(resolve(words)[1]) for _, words, _ in invocations()}
    assert is_group(CLI)
    missing = leaves(CLI) - documented - {("version",)}  # `stile --version` is documented instead
    assert not missing, f"commands missing from the README's table: {sorted(missing)}"


def first_hour() -> list[str]:
    block = README.split("A first hour, offline", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _venv(workdir: Path) -> None:
    """The checkout's .venv when `make` created it; else one that puts this interpreter's `stile` on PATH."""
    if (REPO / ".venv" / "bin" / "activate").is_file():
        (workdir / ".venv").symlink_to(REPO / ".venv")
        return
    bin_dir = workdir / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / "stile"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m stile "$@"\n', encoding="utf-8")
    launcher.chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"; export PATH\n', encoding="utf-8")


def test_the_first_hour_block_runs_as_written(tmp_path: Path) -> None:
    lines = first_hour()
    assert lines[0] == ". .venv/bin/activate"
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copytree(REPO / "examples", work / "examples", ignore=shutil.ignore_patterns("*.db*", "audit-spool"))
    _venv(work)
    env = {**os.environ, "PYTHONPATH": CHILD_PYTHONPATH, "COLUMNS": "200", "NO_COLOR": "1"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "stile").exists())
    for line in lines[1:]:
        expected = int(m.group(1)) if (m := re.search(r"# exit (\d+)", line)) else 0
        proc = subprocess.run(["bash", "-c", f"{lines[0]} && {line}"], capture_output=True, text=True, timeout=120,
                              cwd=work, env=env)
        assert proc.returncode == expected, f"{line}\n{proc.stdout}\n{proc.stderr}"
        assert "Traceback" not in proc.stderr, line
    assert (work / "examples" / "stile.db").is_file()  # the keys went beside identity.yaml
