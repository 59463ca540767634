"""`valid_host` answers from a bounded memo: the same answers as the regex check, whatever the order of values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stile.frontends import hostcheck

hosts = st.one_of(
    st.text(alphabet="abc.-_~0123456789:[]@/ \"'xyzAF", max_size=24),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "localhost", "[::1]", "a.b"]),
              st.integers(0, 99999)),
)


@settings(max_examples=500, deadline=None)
@given(values=st.lists(hosts, max_size=40))
def test_memo_answers_like_the_check(values: list[str]) -> None:
    for v in values + values:  # the second pass answers from the memo
        assert hostcheck.valid_host(v) == hostcheck.check_host(v)
    assert len(hostcheck._SEEN) <= hostcheck._SEEN_MAX


def test_the_memo_stays_bounded() -> None:
    for i in range(3 * hostcheck._SEEN_MAX):
        assert hostcheck.valid_host(f"h{i}:80")
    assert len(hostcheck._SEEN) <= hostcheck._SEEN_MAX
    assert not hostcheck.valid_host("a b") and not hostcheck.valid_host("a:65536")
