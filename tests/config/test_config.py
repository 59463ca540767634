"""The YAML config contract: the issue's example parses, and every defect is named with file and key path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from stile.config.load import ConfigError, load_config, parse_config
from stile.config.model import GatewayConfig
from stile.core.catalog import upstreams_of

# The contract from GitHub issue #2, verbatim. `crm` is not an upstream, so as written it must fail.
ISSUE_YAML = """\
upstreams:
  github: {url: "http://127.0.0.1:3001/mcp"}
  legacy: {url: "http://127.0.0.1:3002/sse", transport: sse}
  files:  {command: ["python", "-m", "files_server"], env: {ROOT: /srv}, cwd: /srv}
virtual_servers:
  support-scope:
    allow_tools: [github.list_issues, github.get_comments, crm.update_ticket]
    prefix: always
  everything:
    upstreams: [github, files]
    auth: none
    allow_tools: ["github.*", "files.read_*"]
    deny_tools: [github.delete_repo]
    tools: {github.list_issues: {name: issues, description: "List open issues"}}
"""
ISSUE_WITH_CRM = ISSUE_YAML.replace(
    "virtual_servers:", '  crm: {url: "https://crm.example.com/mcp"}\nvirtual_servers:', 1
)


def write(tmp_path: Path, text: str, name: str = "stile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(data: Any, where: str = "cfg.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, where)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def base(**virtual_servers: Any) -> dict[str, Any]:
    return {
        "upstreams": {"github": {"url": "http://127.0.0.1:3001/mcp"}, "files": {"command": ["python", "-m", "f"]}},
        "virtual_servers": virtual_servers,
    }


# --- the issue's contract ----------------------------------------------------------------------------


def test_the_issue_config_as_written_fails_naming_the_unknown_upstream_crm_and_where(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_YAML)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: virtual_servers.support-scope.allow_tools[2]: unknown upstream 'crm' in 'crm.update_ticket'"
    ]


def test_the_issue_config_with_crm_declared_loads_with_every_key_honoured(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, ISSUE_WITH_CRM))
    cfg = loaded.config
    assert loaded.path == tmp_path / "stile.yaml"
    assert list(cfg.upstreams) == ["github", "legacy", "files", "crm"]
    assert {n: u.kind for n, u in cfg.upstreams.items()} == {
        "github": "http", "legacy": "sse", "files": "stdio", "crm": "http"}
    files = cfg.upstreams["files"]
    assert (files.command, files.env, files.cwd) == (["python", "-m", "files_server"], {"ROOT": "/srv"}, "/srv")
    support, everything = cfg.virtual_servers["support-scope"], cfg.virtual_servers["everything"]
    assert support.prefix == "always"
    assert support.allow_tools == ["github.list_issues", "github.get_comments", "crm.update_ticket"]
    assert upstreams_of(support, cfg) == ["github", "crm"]
    assert everything.auth == "none"
    assert upstreams_of(everything, cfg) == ["github", "files"]
    assert everything.allow_tools == ["github.*", "files.read_*"]
    assert everything.deny_tools == ["github.delete_repo"]
    override = everything.tools["github.list_issues"]
    assert (override.name, override.description) == ("issues", "List open issues")


def test_defaults_are_the_documented_ones() -> None:
    cfg = parse_config({"upstreams": {"a": {"url": "http://127.0.0.1:1/mcp"}}, "virtual_servers": {"v": {}}})
    up, vs = cfg.upstreams["a"], cfg.virtual_servers["v"]
    assert (cfg.separator, up.era, up.timeout, up.kind) == ("__", "auto", 60.0, "http")
    assert (vs.prefix, vs.allow_tools, vs.deny_tools, vs.auth) == ("always", None, [], None)
    assert cfg.limits.max_body_bytes == 4 * 1024 * 1024


def test_an_empty_file_is_an_empty_gateway(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).config == GatewayConfig()


def test_a_parsed_config_is_immutable() -> None:
    cfg = parse_config(base(v={}))
    with pytest.raises(ValueError):
        cfg.upstreams["github"].timeout = 1


# --- reference errors ------------------------------------------------------------------------------


def test_an_unknown_upstream_in_a_virtual_servers_upstreams_list_is_named_with_its_index() -> None:
    assert problems_of(base(v={"upstreams": ["github", "jira"]})) == [
        "cfg.yaml: virtual_servers.v.upstreams[1]: unknown upstream 'jira' (known: ['files', 'github'])"
    ]


@pytest.mark.parametrize("key", ["allow_tools", "deny_tools", "allow_prompts", "deny_prompts", "allow_resources",
                                 "deny_resources"])
def test_an_unknown_upstream_in_an_allow_or_deny_list_is_named_with_key_and_index(key: str) -> None:
    assert problems_of(base(v={key: ["github.x", "jira.create_issue"]})) == [
        f"cfg.yaml: virtual_servers.v.{key}[1]: unknown upstream 'jira' in 'jira.create_issue'"
    ]


def test_a_glob_over_upstream_names_that_matches_none_is_an_error() -> None:
    assert problems_of(base(v={"allow_tools": ["git*.list", "z?.x"]})) == [
        "cfg.yaml: virtual_servers.v.allow_tools[1]: 'z?.x' matches no upstream"
    ]


def test_a_list_entry_without_an_upstream_part_must_be_written_upstream_dot_name() -> None:
    assert problems_of(base(v={"deny_tools": ["delete_repo"]})) == [
        "cfg.yaml: virtual_servers.v.deny_tools[0]: 'delete_repo' must be written upstream.name"
    ]


def test_an_override_for_an_unknown_upstream_is_named_by_its_reference() -> None:
    assert problems_of(base(v={"tools": {"jira.create": {"name": "create"}}})) == [
        "cfg.yaml: virtual_servers.v.tools.jira.create: unknown upstream 'jira'"
    ]


def test_every_reference_error_is_reported_at_once_not_only_the_first() -> None:
    found = problems_of(base(a={"upstreams": ["x"]}, b={"allow_tools": ["y.t"], "prompts": {"z.p": {}}}))
    assert [p.split(": ")[1] for p in found] == [
        "virtual_servers.a.upstreams[0]", "virtual_servers.b.allow_tools[0]", "virtual_servers.b.prompts.z.p"]


# --- shape errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", ["::", "", "-----", "a b", "."])
def test_a_bad_separator_is_refused_naming_the_separator_key(sep: str) -> None:
    (problem,) = problems_of({"separator": sep})
    assert problem.startswith("cfg.yaml: separator: ")
    assert "1-4 characters of [A-Za-z0-9_-]" in problem


@pytest.mark.parametrize("sep", ["_", "__", "-", "x9"])
def test_good_separators_are_accepted(sep: str) -> None:
    assert parse_config({"separator": sep}).separator == sep


def test_an_upstream_with_both_url_and_command_is_refused_naming_it() -> None:
    (problem,) = problems_of({"upstreams": {"gh": {"url": "http://127.0.0.1:1/mcp", "command": ["x"]}}})
    assert problem == "cfg.yaml: upstreams.gh: Value error, set exactly one of `url` (HTTP) or `command` (stdio)"


def test_an_upstream_with_neither_url_nor_command_is_refused_naming_it() -> None:
    (problem,) = problems_of({"upstreams": {"gh": {"timeout": 5}}})
    assert problem == "cfg.yaml: upstreams.gh: Value error, set exactly one of `url` (HTTP) or `command` (stdio)"


@pytest.mark.parametrize(
    ("upstream", "where", "what"),
    [
        ({"url": "ftp://x/mcp"}, "upstreams.u", "`url` must start with http:// or https://"),
        ({"url": "http://x/mcp", "transport": "stdio"}, "upstreams.u", "transport stdio needs `command`"),
        ({"command": ["x"], "transport": "sse"}, "upstreams.u", "a `command` upstream uses transport stdio"),
        ({"command": []}, "upstreams.u", "`command` must not be empty"),
        ({"url": "http://x/mcp", "timeout": 0}, "upstreams.u.timeout", "greater than 0"),
        ({"url": "http://x/mcp", "era": "future"}, "upstreams.u.era", "'auto', 'legacy' or 'modern'"),
        ({"url": "http://x/mcp", "timout": 3}, "upstreams.u.timout", "Extra inputs are not permitted"),
    ],
)
def test_upstream_field_errors_name_the_field(upstream: dict[str, Any], where: str, what: str) -> None:
    (problem,) = problems_of({"upstreams": {"u": upstream}})
    assert problem.startswith(f"cfg.yaml: {where}: ")
    assert what in problem


def test_a_misspelt_virtual_server_key_is_refused_with_its_path() -> None:
    (problem,) = problems_of(base(v={"allow_tool": ["github.x"]}))
    assert problem == "cfg.yaml: virtual_servers.v.allow_tool: Extra inputs are not permitted"


def test_an_unknown_prefix_mode_lists_the_valid_ones() -> None:
    (problem,) = problems_of(base(v={"prefix": "sometimes"}))
    assert problem == "cfg.yaml: virtual_servers.v.prefix: Input should be 'always', 'conditional' or 'never'"


@pytest.mark.parametrize("name", ["has space", "-dash-first", "x" * 65, "dot.ted"])
def test_upstream_names_that_cannot_build_exposed_names_are_refused(name: str) -> None:
    (problem,) = problems_of({"upstreams": {name: {"url": "http://x/mcp"}}})
    assert problem.startswith("cfg.yaml: upstreams: ")
    assert repr(name) in problem


def test_a_top_level_that_is_not_a_mapping_is_refused() -> None:
    assert problems_of([1, 2]) == ["cfg.yaml: top level must be a mapping"]


# --- YAML and environment --------------------------------------------------------------------------


def test_invalid_yaml_is_reported_with_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        upstreams:
          a: {url: "http://127.0.0.1:1/mcp"
        virtual_servers: {}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: line 3 column 1: invalid YAML: ")


def test_a_bad_indent_is_reported_on_its_own_line(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams:\n  a:\n    url: http://x/mcp\n   bad: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: line 4 column 4: invalid YAML")


def test_a_duplicate_key_in_yaml_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        upstreams:
          github: {url: "http://127.0.0.1:1/mcp"}
        virtual_servers:
          support:
            deny_tools: [github.delete_repo]
          support:
            upstreams: [github]
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: line 6 column 3: invalid YAML: duplicate key 'support'"]


def test_yaml_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        upstreams:
          a: &defaults {url: "http://127.0.0.1:1/mcp", timeout: 5}
          b:
            <<: *defaults
            timeout: 9
        """)
    ups = load_config(path).config.upstreams
    assert (ups["a"].timeout, ups["b"].timeout, ups["b"].url) == (5, 9, "http://127.0.0.1:1/mcp")


def test_python_object_tags_are_refused_as_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "upstreams: !!python/object/apply:os.system [echo pwned]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "invalid YAML" in info.value.problems[0]


def test_an_unreadable_file_is_reported_with_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: cannot read: No such file or directory"]


def test_a_missing_environment_variable_is_named_with_the_key_that_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STILE_TEST_UNSET_TOKEN", raising=False)
    path = write(tmp_path, """\
        upstreams:
          gh:
            url: "http://127.0.0.1:1/mcp"
            headers: {Authorization: "Bearer ${STILE_TEST_UNSET_TOKEN}"}
        """)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: upstreams.gh.headers.Authorization: environment variable STILE_TEST_UNSET_TOKEN is not set"
    ]


def test_missing_variables_inside_lists_are_named_with_their_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STILE_TEST_NOPE", raising=False)
    assert problems_of({"upstreams": {"f": {"command": ["python", "${STILE_TEST_NOPE}"]}}}) == [
        "cfg.yaml: upstreams.f.command[1]: environment variable STILE_TEST_NOPE is not set"
    ]


def test_environment_variables_expand_and_defaults_apply_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILE_TEST_PORT", "4321")
    monkeypatch.delenv("STILE_TEST_HOST", raising=False)
    cfg = parse_config({"upstreams": {"a": {
        "url": "http://${STILE_TEST_HOST:-127.0.0.1}:${STILE_TEST_PORT}/mcp",
        "env": {"TOKEN": "${STILE_TEST_HOST:-}"},
    }}})
    assert cfg.upstreams["a"].url == "http://127.0.0.1:4321/mcp"
    assert cfg.upstreams["a"].env == {"TOKEN": ""}


def test_an_expanded_value_is_validated_like_a_literal_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STILE_TEST_URL", "file:///etc/passwd")
    (problem,) = problems_of({"upstreams": {"a": {"url": "${STILE_TEST_URL}"}}})
    assert problem.startswith("cfg.yaml: upstreams.a: ")
    assert "http://" in problem
