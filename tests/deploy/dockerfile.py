"""Just enough of the Dockerfile and .dockerignore formats to run an image's build steps without an engine.

`parse` reads instructions (line continuations, comments, `FROM ... AS name`, global and stage `ARG`s),
`expand` substitutes `$VAR` / `${VAR}` as the builder does, and `context_files` applies `.dockerignore`
(Go `filepath.Match` patterns, `**`, `!` re-includes, the last matching line wins).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    keyword: str
    rest: str

    def flags_and_args(self) -> tuple[dict[str, str], str]:
        """`--name=value` flags before the arguments (RUN --mount, COPY --from, HEALTHCHECK --interval)."""
        flags: dict[str, str] = {}
        rest = self.rest
        while m := re.match(r"--([a-z-]+)=(\S+)\s+", rest):
            flags[m.group(1)] = m.group(2)
            rest = rest[m.end():]
        return flags, rest

    def exec_form(self) -> list[str]:
        """The JSON array of ENTRYPOINT / CMD (HEALTHCHECK: after `CMD`)."""
        _, rest = self.flags_and_args()
        rest = rest.removeprefix("CMD").strip()
        value = json.loads(rest)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [found] = self.all(keyword)
        return found


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        [found] = [s for s in self.stages if s.name == name]
        return found


def _logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        if raw.strip().startswith("#"):
            continue  # comments (and parser directives) are dropped, also inside a continuation
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            lines.append(line)
    assert not pending.strip(), "the Dockerfile ends inside a line continuation"
    return lines


def parse(text: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=expand(parts[0], global_args), name=name))
        elif keyword == "ARG" and not stages:
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(global_args, stages)


_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def assignments(instruction: Instruction, env: dict[str, str]) -> dict[str, str]:
    """`ENV A=1 B=$A` / `ARG A=1`: each value expanded with what is set before it."""
    out: dict[str, str] = {}
    for word in shlex.split(instruction.rest):
        key, sep, value = word.partition("=")
        assert sep or instruction.keyword == "ARG", f"ENV needs KEY=value, got {word!r}"
        out[key] = expand(value, {**env, **out})
    return out


def _pattern_re(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(excluded?, pattern) per line of a .dockerignore."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((not negated, _pattern_re(line.lstrip("!").strip("/"))))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """A path is excluded when the last rule matching it, or one of its parent directories, excludes it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for excludes, pattern in rules:
        if any(pattern.fullmatch(p) for p in prefixes):
            verdict = excludes
    return verdict


def context_files(root: Path, ignore_text: str, skip_dirs: frozenset[str] = frozenset({".git"})) -> list[str]:
    """Relative paths of the files `docker build root` would send, after .dockerignore."""
    rules = ignore_rules(ignore_text)
    reincluded = [p.pattern for excludes, p in rules if not excludes]
    found: list[str] = []

    def walk(directory: Path, rel: str) -> None:
        for entry in sorted(directory.iterdir()):
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir() and not entry.is_symlink():
                if entry.name in skip_dirs:
                    continue
                # an excluded directory is entered only when a `!` line may re-include something in it
                if excluded(path, rules) and not any(r.startswith(re.escape(path)) for r in reincluded):
                    continue
                walk(entry, path)
            elif not excluded(path, rules):
                found.append(path)

    walk(root, "")
    return found
