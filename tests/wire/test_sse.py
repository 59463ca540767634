"""SSE framing: the encoder's output decodes back, and the decoder is indifferent to chunk boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stile.wire import sse
from stile.wire.sse import Decoder, Event

# One line of data: anything but the line terminators SSE reserves.
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=40)
field_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), min_size=1,
                     max_size=12)
events = st.builds(
    lambda lines, event, id_: (("\n".join(lines)), event, id_),
    st.lists(line_text, min_size=1, max_size=4),
    st.one_of(st.none(), field_text),
    st.one_of(st.none(), field_text),
)


def decode_all(chunks: list[bytes]) -> list[Event]:
    dec = Decoder()
    out: list[Event] = []
    for chunk in chunks:
        out.extend(dec.feed(chunk))
    return out


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    pieces.append(data[last:])
    return pieces


# --- examples ---------------------------------------------------------------------------------------


def test_encode_writes_event_id_and_one_data_line_per_line() -> None:
    assert sse.encode(b'{"a":1}', event="message", id="7") == b'event: message\nid: 7\ndata: {"a":1}\n\n'
    assert sse.encode(b"one\ntwo", event=None) == b"data: one\ndata: two\n\n"


def test_decoder_yields_an_event_only_when_its_blank_line_arrives() -> None:
    dec = Decoder()
    assert dec.feed(b"event: endpoint\ndata: /messages?x=1\n") == []
    assert dec.feed(b"\n") == [Event(data="/messages?x=1", event="endpoint")]


def test_decoder_joins_multiple_data_lines_with_newlines() -> None:
    assert decode_all([b"data: a\ndata: b\ndata:\n\n"]) == [Event(data="a\nb\n")]


def test_decoder_skips_comments_and_keep_alives() -> None:
    assert decode_all([sse.COMMENT_KEEPALIVE, b": stream open\n\n", b"data: x\n\n"]) == [Event(data="x")]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_decoder_accepts_every_line_ending_the_spec_allows(eol: bytes) -> None:
    stream = eol.join([b"event: ping", b"id: 3", b"retry: 1500", b"data: hi", b"", b"data: second", b"", b""])
    assert decode_all([stream]) == [Event(data="hi", event="ping", id="3", retry=1500), Event(data="second")]


def test_crlf_split_between_two_chunks_counts_as_one_line_ending() -> None:
    dec = Decoder()
    assert dec.feed(b"data: a\r") == []
    assert dec.feed(b"\n") == []
    assert dec.feed(b"\r") == [Event(data="a")]
    assert dec.feed(b"\n") == []
    assert dec.feed(b"data: b\n\n") == [Event(data="b")]


def test_an_event_ended_by_cr_cr_is_dispatched_without_waiting_for_more_bytes() -> None:
    assert Decoder().feed(b"data: last\r\r") == [Event(data="last")]


def test_decoder_strips_exactly_one_space_after_the_colon() -> None:
    assert decode_all([b"data:  two spaces\n\n", b"data:none\n\n"]) == [Event(data=" two spaces"), Event(data="none")]


def test_decoder_ignores_a_non_numeric_retry_and_unknown_fields() -> None:
    assert decode_all([b"retry: soon\nfoo: bar\ndata: x\n\n"]) == [Event(data="x")]


def test_decoder_decodes_utf8_split_inside_a_multibyte_character() -> None:
    raw = sse.encode("h\u00e9llo \U0001f600".encode())
    assert decode_all([raw[:9], raw[9:10], raw[10:]]) == [Event(data="h\u00e9llo \U0001f600")]


def test_a_blank_line_without_fields_dispatches_nothing() -> None:
    assert decode_all([b"\n\n\r\n"]) == []


def test_an_unterminated_event_at_end_of_stream_is_not_dispatched() -> None:
    assert decode_all([b"data: partial\n"]) == []


def test_priming_event_with_id_and_empty_data_is_dispatched_with_its_id() -> None:
    assert decode_all([b"id: p1\ndata:\n\n"]) == [Event(data="", id="p1")]


# --- properties -------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(events, min_size=1, max_size=6))
def test_encoded_events_decode_back_to_the_same_data_event_and_id(
    evs: list[tuple[str, str | None, str | None]],
) -> None:
    stream = b"".join(sse.encode(data.encode(), event=event, id=id_) for data, event, id_ in evs)
    assert decode_all([stream]) == [Event(data=d, event=e or "message", id=i) for d, e, i in evs]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(events, min_size=1, max_size=5),
    st.lists(st.integers(min_value=0), max_size=12),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.booleans(),
)
def test_splitting_a_stream_at_arbitrary_points_yields_the_same_events(
    evs: list[tuple[str, str | None, str | None]], cuts: list[int], eol: bytes, comments: bool
) -> None:
    parts: list[bytes] = []
    for data, event, id_ in evs:
        if comments:
            parts.append(b": keep-alive" + eol + eol)
        parts.append(sse.encode(data.encode(), event=event, id=id_).replace(b"\n", eol))
    stream = b"".join(parts)
    whole = decode_all([stream])
    assert decode_all(split_at(stream, cuts)) == whole
    assert decode_all([bytes([b]) for b in stream]) == whole
    assert [e.data for e in whole] == [d for d, _, _ in evs]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=8))
def test_decoder_never_raises_and_is_split_invariant_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    assert decode_all(split_at(data, cuts)) == decode_all([data])


def test_an_event_that_never_ends_raises_event_too_large_instead_of_buffering() -> None:
    dec = Decoder(max_event=1024)
    assert dec.feed(b"data: ok\n\n") == [Event(data="ok")]
    dec.feed(b"data: " + b"x" * 1000)
    with pytest.raises(sse.EventTooLarge, match="1024 bytes"):
        dec.feed(b"x" * 100)  # no line end yet, the line alone is over the limit


def test_many_data_lines_of_one_event_count_towards_the_limit() -> None:
    dec = Decoder(max_event=1024)
    with pytest.raises(sse.EventTooLarge):
        for _ in range(100):
            dec.feed(b"data: " + b"y" * 50 + b"\n")


def test_events_under_the_limit_pass_however_many_there_are() -> None:
    dec = Decoder(max_event=1024)
    out = []
    for _ in range(200):
        out.extend(dec.feed(b"data: " + b"z" * 900 + b"\n\n"))
    assert len(out) == 200 and out[0].data == "z" * 900


def test_a_long_line_in_many_small_chunks_is_scanned_once() -> None:
    dec = Decoder()
    for _ in range(20_000):
        assert dec.feed(b"a" * 100) == []
    assert dec._scanned == 2_000_000
    assert dec.feed(b"\n\n") == []  # a line with no field name ("aaa...") is ignored; the event is empty
