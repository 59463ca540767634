"""Views: what a virtual server exposes of its upstreams' inventories (names, filters, overrides, URIs)."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stile.config.load import parse_config
from stile.config.model import GatewayConfig
from stile.core.catalog import Inventory, View, build_view, is_prefixed, template_regex, upstreams_of
from stile.core.naming import Namer


def tool(name: str, description: str = "", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description or f"{name} tool",
            "inputSchema": {"type": "object"}, **extra}


INVENTORIES: dict[str, Inventory] = {
    "github": Inventory(
        tools=[tool("list_issues"), tool("get_comments"), tool("delete_repo"), tool("search")],
        prompts=[{"name": "triage", "arguments": [{"name": "repo"}]}],
        resources=[{"uri": "repo://stile/readme", "name": "readme"}],
        templates=[{"uriTemplate": "repo://{owner}/{name}", "name": "repo"}],
        ok=True,
    ),
    "files": Inventory(
        tools=[tool("read_file"), tool("read_env"), tool("list_files"), tool("search")],
        prompts=[{"name": "triage"}],
        resources=[{"uri": "file:///readme", "name": "readme"}, {"uri": "file:///secret", "name": "secret"}],
        templates=[{"uriTemplate": "file:///{path}", "name": "file"}],
        ok=True,
    ),
}


def config(vs: dict[str, Any], *, separator: str = "__", upstreams: tuple[str, ...] = ("github", "files")
           ) -> GatewayConfig:
    return parse_config({
        "separator": separator,
        "upstreams": {u: {"url": f"http://127.0.0.1:1/{u}"} for u in upstreams},
        "virtual_servers": {"v": vs},
    })


def view(vs: dict[str, Any], inv: dict[str, Inventory] | None = None, **kw: Any) -> View:
    cfg = config(vs, **kw)
    return build_view("v", cfg.virtual_servers["v"], cfg, INVENTORIES if inv is None else inv)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["name"] for i in items]


# --- name-spacing ------------------------------------------------------------------------------------


def test_prefix_always_name_spaces_every_tool_and_prompt_even_for_one_upstream() -> None:
    v = view({"upstreams": ["files"], "prefix": "always"})
    assert names(v.tools) == ["files__read_file", "files__read_env", "files__list_files", "files__search"]
    assert names(v.prompts) == ["files__triage"]
    assert v.tool_index["files__read_env"].upstream == "files"
    assert v.tool_index["files__read_env"].original == "read_env"


def test_prefix_conditional_name_spaces_only_when_the_view_spans_several_upstreams() -> None:
    single = view({"upstreams": ["github"], "prefix": "conditional"})
    several = view({"upstreams": ["github", "files"], "prefix": "conditional"})
    assert names(single.tools) == ["list_issues", "get_comments", "delete_repo", "search"]
    assert "github__list_issues" in names(several.tools)
    assert "files__search" in names(several.tools)


def test_prefix_never_keeps_original_names() -> None:
    v = view({"upstreams": ["github"], "prefix": "never"})
    assert names(v.tools) == ["list_issues", "get_comments", "delete_repo", "search"]
    assert v.tool_index["search"].original == "search"


def test_the_configured_separator_joins_upstream_and_tool() -> None:
    v = view({"upstreams": ["github"]}, separator="-")
    assert names(v.tools)[0] == "github-list_issues"


@pytest.mark.parametrize(("mode", "count", "expected"), [
    ("always", 1, True), ("always", 2, True), ("conditional", 1, False), ("conditional", 2, True),
    ("never", 1, False), ("never", 2, False),
])
def test_is_prefixed_follows_the_mode_and_upstream_count(mode: str, count: int, expected: bool) -> None:
    cfg = config({"prefix": mode})
    assert is_prefixed(cfg.virtual_servers["v"], ["github", "files"][:count]) is expected


def test_tools_keep_every_field_but_the_name() -> None:
    annotated = tool("read_file", annotations={"readOnlyHint": True}, _meta={"vendor/x": 1}, title="Read")
    inv = {"files": Inventory(tools=[annotated], ok=True)}
    (exposed,) = view({"upstreams": ["files"]}, inv).tools
    assert exposed == {**annotated, "name": "files__read_file"}
    assert annotated["name"] == "read_file", "the inventory item must not be mutated"


# --- allow / deny ----------------------------------------------------------------------------------


def test_allow_globs_select_tools_by_upstream_dot_name() -> None:
    v = view({"allow_tools": ["github.*", "files.read_*"]})
    assert names(v.tools) == ["github__list_issues", "github__get_comments", "github__delete_repo",
                              "github__search", "files__read_file", "files__read_env"]


def test_deny_wins_over_allow() -> None:
    v = view({"allow_tools": ["github.*"], "deny_tools": ["github.delete_repo", "github.s*"]})
    assert names(v.tools) == ["github__list_issues", "github__get_comments"]
    assert "github__delete_repo" not in v.tool_index


def test_deny_alone_hides_only_what_it_names() -> None:
    v = view({"upstreams": ["files"], "deny_tools": ["files.read_env"]})
    assert names(v.tools) == ["files__read_file", "files__list_files", "files__search"]


def test_allow_lists_imply_the_views_upstreams() -> None:
    cfg = config({"allow_tools": ["files.read_*"]})
    assert upstreams_of(cfg.virtual_servers["v"], cfg) == ["files"]
    v = view({"allow_tools": ["files.read_*"]})
    assert v.upstreams == ["files"]
    # allow_tools narrows tools only; prompts and resources of the implied upstream stay visible
    assert names(v.prompts) == ["files__triage"]
    assert all(r["uri"].startswith("files+") for r in v.resources)


def test_a_view_without_upstreams_or_allow_lists_spans_every_upstream() -> None:
    assert view({}).upstreams == ["github", "files"]


def test_prompt_and_resource_filters_apply_like_tool_filters() -> None:
    v = view({"upstreams": ["github", "files"], "deny_prompts": ["files.*"], "deny_resources": ["files.file:///secret"]})
    assert names(v.prompts) == ["github__triage"]
    assert [r["uri"] for r in v.resources] == ["github+repo://stile/readme", "files+file:///readme"]


def test_resource_allow_list_filters_resources_and_templates_by_original_uri() -> None:
    v = view({"upstreams": ["files"], "allow_resources": ["files.file:///readme"]})
    assert [r["uri"] for r in v.resources] == ["files+file:///readme"]
    assert v.templates == []


# --- overrides ---------------------------------------------------------------------------------------


def test_a_rename_replaces_the_exposed_name_and_still_routes_to_the_original() -> None:
    v = view({"upstreams": ["github"], "tools": {"github.list_issues": {"name": "issues"}}})
    assert names(v.tools)[0] == "issues"
    assert "github__list_issues" not in v.tool_index
    target = v.tool_index["issues"]
    assert (target.upstream, target.original) == ("github", "list_issues")


def test_a_description_override_changes_only_the_description() -> None:
    v = view({"upstreams": ["github"], "tools": {"github.search": {"description": "Search issues"}}})
    exposed = next(t for t in v.tools if t["name"] == "github__search")
    assert exposed["description"] == "Search issues"
    assert exposed["inputSchema"] == {"type": "object"}
    assert INVENTORIES["github"].tools[3]["description"] == "search tool"


def test_rename_and_description_apply_together_and_to_prompts() -> None:
    v = view({"upstreams": ["github"], "tools": {"github.list_issues": {"name": "issues", "description": "Open"}},
              "prompts": {"github.triage": {"name": "triage_repo", "description": "Triage"}}})
    assert v.tools[0]["name"] == "issues" and v.tools[0]["description"] == "Open"
    assert v.prompts == [{"name": "triage_repo", "arguments": [{"name": "repo"}], "description": "Triage"}]
    assert v.prompt_index["triage_repo"].original == "triage"


def test_a_rename_that_llm_apis_would_reject_is_reported() -> None:
    v = view({"upstreams": ["github"], "tools": {"github.search": {"name": "search issues!"}}})
    assert any("'search issues!'" in p and "LLM APIs reject" in p for p in v.problems)


# --- problems ----------------------------------------------------------------------------------------


def test_a_name_collision_is_reported_naming_both_sources_and_the_first_wins() -> None:
    v = view({"prefix": "never"})
    assert names(v.tools).count("search") == 1
    assert v.tool_index["search"].upstream == "github"
    assert "tool name 'search' collides: github.search and files.search; keeping github.search" in v.problems
    assert "prompt name 'triage' collides: github.triage and files.triage; keeping github.triage" in v.problems


def test_a_rename_onto_an_existing_name_is_a_collision_too() -> None:
    v = view({"upstreams": ["github"], "tools": {"github.search": {"name": "github__list_issues"}}})
    assert any("collides: github.list_issues and github.search" in p for p in v.problems)
    assert v.tool_index["github__list_issues"].original == "list_issues"


def test_an_allow_entry_that_matches_nothing_is_reported() -> None:
    v = view({"allow_tools": ["github.list_issues", "github.no_such_tool", "files.zip_*"]})
    assert "tool allow entry 'github.no_such_tool' matches nothing its upstream offers" in v.problems
    assert "tool allow entry 'files.zip_*' matches nothing its upstream offers" in v.problems
    assert not any("github.list_issues" in p for p in v.problems)


def test_an_allow_entry_of_an_unreachable_upstream_is_not_blamed_on_the_entry() -> None:
    down = {"github": Inventory(ok=False, error="connection refused"), "files": INVENTORIES["files"]}
    v = view({"allow_tools": ["github.list_issues", "files.read_file"]}, down)
    assert names(v.tools) == ["files__read_file"]
    assert v.problems == []


def test_a_clean_view_has_no_problems() -> None:
    assert view({"upstreams": ["github", "files"]}).problems == []


def test_a_resource_offered_twice_under_one_exposed_uri_is_reported() -> None:
    inv = {"github": Inventory(resources=[{"uri": "same://x"}], ok=True),
           "files": Inventory(resources=[{"uri": "same://x"}], ok=True)}
    v = view({"prefix": "never"}, inv)
    assert [r["uri"] for r in v.resources] == ["same://x"]
    assert any("'same://x' offered by both 'github' and 'files'" in p for p in v.problems)


# --- resource URIs -----------------------------------------------------------------------------------


def test_resource_uris_and_templates_are_prefixed_with_the_upstream_as_a_scheme_part() -> None:
    v = view({"upstreams": ["github", "files"]})
    assert [r["uri"] for r in v.resources] == ["github+repo://stile/readme", "files+file:///readme",
                                               "files+file:///secret"]
    assert [t["uriTemplate"] for t in v.templates] == ["github+repo://{owner}/{name}", "files+file:///{path}"]
    assert v.resources[0]["name"] == "readme"


@pytest.mark.parametrize("uri", ["github+repo://stile/readme", "files+file:///readme", "github+repo://a/b+c"])
def test_resolve_uri_inverts_the_prefix(uri: str) -> None:
    v = view({"upstreams": ["github", "files"]})
    up, original = uri.split("+", 1)
    assert v.resolve_uri(uri) == (up, original)


@pytest.mark.parametrize("uri", ["repo://stile/readme", "crm+x://1", "+file:///readme", ""])
def test_resolve_uri_refuses_uris_without_a_known_upstream_prefix(uri: str) -> None:
    assert view({"upstreams": ["github", "files"]}).resolve_uri(uri) is None


def test_an_unprefixed_single_upstream_view_routes_uris_unchanged() -> None:
    v = view({"upstreams": ["files"], "prefix": "never"})
    assert [r["uri"] for r in v.resources] == ["file:///readme", "file:///secret"]
    assert v.resolve_uri("file:///anything") == ("files", "file:///anything")


def test_an_unprefixed_view_over_two_upstreams_routes_each_listed_resource_to_its_upstream() -> None:
    v = view({"upstreams": ["github", "files"], "prefix": "never"})
    for r in v.resources:
        assert v.resolve_uri(r["uri"]) is not None, f"{r['uri']} is listed but cannot be read"
    assert v.resolve_uri("repo://stile/readme") == ("github", "repo://stile/readme")
    assert v.resolve_uri("file:///readme") == ("files", "file:///readme")


def test_namer_uri_and_split_uri_are_inverse_for_every_upstream() -> None:
    namer = Namer(True, "__")
    for up in ("a", "my-up", "x_1"):
        for uri in ("file:///a+b", "s://", "weird+scheme://x"):
            assert namer.split_uri(namer.uri(up, uri), ["a", "my-up", "x_1"]) == (up, uri)


# --- determinism -------------------------------------------------------------------------------------


def test_the_view_lists_in_config_order_then_upstream_order() -> None:
    v = view({"upstreams": ["files", "github"]})
    assert names(v.tools)[:4] == ["files__read_file", "files__read_env", "files__list_files", "files__search"]
    assert names(v.tools)[4:] == ["github__list_issues", "github__get_comments", "github__delete_repo",
                                  "github__search"]


def test_building_a_view_is_deterministic_whatever_order_inventories_arrive_in() -> None:
    cfg = config({"allow_tools": ["github.*", "files.*"], "deny_tools": ["files.read_env"]})
    vs = cfg.virtual_servers["v"]
    reference = build_view("v", vs, cfg, INVENTORIES)
    keys = list(INVENTORIES)
    for seed in range(5):
        random.Random(seed).shuffle(keys)
        again = build_view("v", vs, cfg, {k: INVENTORIES[k] for k in keys})
        assert names(again.tools) == names(reference.tools)
        assert list(again.tool_index) == list(reference.tool_index)
        assert again.resources == reference.resources and again.problems == reference.problems


# --- the visibility rule's template fast path (a regex per RFC 6570 template) must admit every URI the template
# expands to, or a visible resource would answer "not found" ---------------------------------------------------
_UNRESERVED = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%", min_size=0,
                      max_size=12)
_RESERVED = st.text(alphabet="abcXYZ019-._~/:@!$&'()*+,;=%", min_size=0, max_size=16)


@given(prefix=st.sampled_from(["notes://note/", "file:///", "db://", "x:"]), simple=_UNRESERVED,
       reserved=_RESERVED, seg=st.lists(_UNRESERVED, max_size=3), query=st.lists(_UNRESERVED, max_size=2))
def test_a_template_regex_admits_every_expansion_of_its_template(prefix: str, simple: str, reserved: str,
                                                                  seg: list[str], query: list[str]) -> None:
    assert template_regex(prefix + "{id}").fullmatch(prefix + simple)
    assert template_regex(prefix + "{+path}").fullmatch(prefix + reserved)
    assert template_regex(prefix + "{id}/data").fullmatch(prefix + simple + "/data")
    assert template_regex(prefix + "base{/seg*}").fullmatch(prefix + "base" + "".join("/" + s for s in seg))
    expanded = "".join(("?" if i == 0 else "&") + f"q{i}={v}" for i, v in enumerate(query))
    assert template_regex(prefix + "list{?q0,q1}").fullmatch(prefix + "list" + expanded)


@pytest.mark.parametrize(("template", "uri"), [
    ("notes://note/{id}", "notes://note/1/extra"),  # a simple expansion never contains "/"
    ("notes://note/{id}", "notes://other/1"),
    ("pub://{item}", "sec://1"),
])
def test_a_template_regex_refuses_uris_its_template_cannot_produce(template: str, uri: str) -> None:
    assert template_regex(template).fullmatch(uri) is None
