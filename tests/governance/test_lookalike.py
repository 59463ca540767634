"""Lookalike detection: names close after folding case, separators and homoglyphs; identical descriptions."""

from __future__ import annotations

import random

import pytest

from stile.governance.lookalike import Tool, alike, distance, lookalikes, normalise, pairs, within


def test_normalise_folds_case_separators_and_homoglyphs() -> None:
    assert normalise("List-Issues") == normalise("list_issues") == normalise("list.issues")
    assert normalise("l\u0456st_issues") == normalise("list_issues")  # Cyrillic i
    assert normalise("\u0430dd") == normalise("add")  # Cyrillic a
    assert normalise("get_0rders") == normalise("get_orders")
    assert normalise("de1ete") == normalise("delete")
    assert normalise("\uff4cist") == normalise("list")  # fullwidth l (NFKC)


@pytest.mark.parametrize(("a", "b"), [
    ("list_issues", "list_issues"),
    ("list_issues", "List-Issues"),
    ("list_issues", "l\u0456st_issues"),
    ("list_issues", "list_issue"),
    ("list_issues", "lists_issue"),
    ("create_pull_request", "create_pul_requests"),
    ("read_file", "read_fi1e"),
])
def test_close_names_look_alike(a: str, b: str) -> None:
    assert alike(a, "one thing", b, "another thing") is not None


@pytest.mark.parametrize(("a", "b"), [
    ("list_issues", "create_issue"),
    ("read_file", "write_file"),
    ("search", "fetch_url"),
    ("fetch", "patch"),  # two edits, but names under 8 characters are allowed one
    ("get", "set"),  # names under 4 characters must be equal after folding
])
def test_different_names_do_not(a: str, b: str) -> None:
    assert alike(a, "one thing", b, "another thing") is None


def test_shorter_names_are_allowed_fewer_edits() -> None:
    assert alike("list", "x", "lists", "y") is not None
    assert alike("ech0", "x", "echo", "y") is not None
    assert alike("get", "x", "gets", "y") is None
    assert distance(normalise("fetch"), normalise("patch")) == 2
    assert alike("fetch_all", "x", "patch_all", "y") is not None  # the same two edits on a longer name


def test_identical_descriptions_look_alike_but_short_or_empty_ones_do_not() -> None:
    assert alike("summarise", "Summarise  a\nrepository's issues.", "digest", "summarise a repository's issues.") \
        == "identical description"
    assert alike("summarise", "", "digest", "") is None
    assert alike("summarise", "Run it", "digest", "Run it") is None
    assert alike("summarise", None, "digest", 7) is None


def test_only_tools_on_another_upstream_count() -> None:
    new = [Tool("evil", "list_lssues", "Lists issues")]
    existing = [Tool("github", "list_issues", "List issues"), Tool("evil", "list_issues", "x")]
    hits = lookalikes(new, existing)
    assert [(h.existing.upstream, h.existing.name) for h in hits] == [("github", "list_issues")]
    assert "evil.list_lssues looks like github.list_issues" in hits[0].message()


def test_pairs_lists_each_cross_upstream_pair_once() -> None:
    tools = [Tool("a", "send_mail", None), Tool("b", "send-mail", None), Tool("a", "send_mall", None)]
    found = {(h.new.upstream, h.new.name, h.existing.upstream, h.existing.name) for h in pairs(tools)}
    assert found == {("a", "send_mail", "b", "send-mail"), ("b", "send-mail", "a", "send_mall")}


def test_the_bounded_check_agrees_with_the_edit_distance() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        a = "".join(rng.choice("abl1") for _ in range(rng.randint(0, 7)))
        b = "".join(rng.choice("abl1") for _ in range(rng.randint(0, 7)))
        for k in range(3):
            assert within(a, b, k) == (distance(a, b) <= k), (a, b, k)


def test_the_index_finds_what_comparing_every_pair_finds() -> None:
    rng = random.Random(3)
    words = ["list", "get", "issue", "repo", "file", "read", "note", "user"]
    tools = [Tool(f"u{i % 3}", "_".join(rng.sample(words, 2)) + rng.choice(["", "s", "1", "_x"]),
                  rng.choice([None, "Read one file of the repository.", "x"])) for i in range(150)]
    brute = {(t.upstream, t.name, o.upstream, o.name) for t in tools for o in tools
             if t.upstream != o.upstream and alike(t.name, t.description, o.name, o.description)}
    indexed = {(h.new.upstream, h.new.name, h.existing.upstream, h.existing.name) for h in lookalikes(tools, tools)}
    assert indexed == brute and brute
