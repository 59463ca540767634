"""The audit write-ahead log: records are on file before any reply of their loop tick is written (one write
per tick, `stile.barrier`), checkpointed once every sink has them, replayed (same ids, in order) after a
crash, bounded; fsync mode's group commit; JSONL replay dedupe."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from stile.barrier import BARRIER
from stile.core.context import CallContext, Principal
from stile.observe import audit_wal
from stile.observe.audit import AuditLog, Outcome
from stile.observe.audit_sinks import JsonlSink, verify_jsonl
from stile.observe.audit_wal import GroupCommit, Wal, WalError, orphans
from tests.observe.test_spool import FakeSink, ids, until, within
from tests.support import REPO


def ctx(n: int) -> CallContext:
    return CallContext("v", "tools/call", {"name": "t", "arguments": {"n": n, "token": "s3cret"}}, n, "modern",
                       "2026-07-28", principal=Principal(agent="ci", user="alice", roles=("dev",), method="api_key"))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.wal"))


def crash(log: AuditLog) -> None:
    """What SIGKILL leaves: the files as they are, the locks released, nothing flushed."""
    assert log.wal is not None and log._writer is not None
    log._writer.cancel()
    for segment in (*log.wal.old, log.wal.live):
        if segment is not None:
            os.close(segment.fd)
    log.wal.live = None
    log.wal.old.clear()


async def test_a_record_is_in_the_wal_before_the_ticks_replies(tmp_path: Path) -> None:
    log = AuditLog([FakeSink()], wal_dir=tmp_path / "wal")
    await log.start()
    log.record(ctx(1), Outcome("ok", 0.001, tool="t", upstream="up"))
    log.record_http("v", {}, "unauthenticated", "no credentials")
    assert log.wal is not None and log.wal.position == 2  # staged: positions are known at once
    BARRIER.drain()  # the end of the tick: what runs before any reply it holds is released
    lines = [orjson.loads(line) for path in segments(tmp_path / "wal") for line in path.read_bytes().splitlines()]
    assert [line[0] for line in lines] == [f"{log._boot}-1", f"{log._boot}-2"]
    assert lines[0][2][9] == {"n": 1, "token": "***"}  # arguments are redacted before they reach the disk
    await log.aclose()
    assert segments(tmp_path / "wal") == []  # a graceful stop delivered everything


async def test_delivered_records_are_checkpointed(tmp_path: Path) -> None:
    fake = FakeSink()
    log = AuditLog([fake], wal_dir=tmp_path / "wal")
    await log.start()
    for n in range(5):
        log.record(ctx(n), Outcome("ok", 0.001))
    assert log.wal is not None and log.wal.live is not None and log.wal.live.size == 0  # staged, not yet written
    BARRIER.drain()
    assert log.wal.live.size > 0
    await until(fake, lambda: len(fake.written) == 5)
    await until(fake, lambda: log.written == 5)
    assert log.wal.live.size == 0 and log.wal.live.path.stat().st_size == 0
    await log.aclose()


async def test_after_a_crash_the_next_start_replays_every_record_in_order(tmp_path: Path) -> None:
    first = FakeSink()
    log = AuditLog([first], wal_dir=tmp_path / "wal", queue_size=100)
    await log.start()
    for n in range(7):
        log.record(ctx(n), Outcome("ok", 0.001, tool="t", upstream="up", upstream_name="tool"))
    BARRIER.drain()  # the tick ends: its records are written, then its replies would be
    crash(log)  # before the writer ran (no await since the records): the sink never saw them
    assert first.written == []
    assert len(orphans(tmp_path / "wal")) == 1

    second = FakeSink()
    again = AuditLog([second], wal_dir=tmp_path / "wal")
    await again.start()
    assert [e["request_id"] for e in second.written] == list(range(7))
    assert ids(second.written) == [f"{log._boot}-{n}" for n in range(1, 8)]  # the dead process's ids: dedupable
    event = second.written[0]
    assert event["principal"] == {"agent": "ci", "user": "alice", "roles": ["dev"], "auth": "api_key"}
    assert (event["tool"], event["upstream"], event["upstream_name"], event["cost"]) == ("t", "up", "tool", 1.0)
    assert again.replayed == 7 and orphans(tmp_path / "wal") == []  # the dead segment is gone
    await again.aclose()


async def test_a_live_processs_segment_is_not_replayed_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    live = AuditLog([FakeSink()], wal_dir=tmp_path / "wal")
    await live.start()
    live.record(ctx(1), Outcome("ok", 0.0))
    BARRIER.drain()
    dead = tmp_path / "wal" / "00000000000000000001-dead-000001.wal"
    good = orjson.dumps(["dead-1", 1.0, None, ["ok", 0.0, "", "", "", None, None, "r", 0], {"method": "x"}])
    dead.write_bytes(good + b"\n" + b"not json\n" + good[:20])  # an unreadable line, then a torn one
    fake = FakeSink()
    other = AuditLog([fake], wal_dir=tmp_path / "wal")
    await other.start()
    assert ids(fake.written) == ["dead-1"]
    assert not dead.exists() and len(segments(tmp_path / "wal")) == 2  # the two live processes' segments
    await other.aclose()
    await live.aclose()


def test_the_live_segment_rotates_and_old_segments_go_once_delivered(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_wal, "SEGMENT_BYTES", 100)
    wal = Wal(tmp_path, "boot")
    wal.open()
    line = b"x" * 60 + b"\n"
    for _ in range(2):
        wal.append(line)
    wal.checkpoint(1)  # one of two delivered, the segment is over 100 bytes: rotate
    wal.append(line)
    assert len(segments(tmp_path)) == 2 and wal.position == 3
    wal.checkpoint(2)  # the old segment is all delivered
    assert len(segments(tmp_path)) == 1 and wal.bytes == len(line)
    wal.checkpoint(3)
    assert wal.bytes == 0 and os.path.getsize(segments(tmp_path)[0]) == 0
    wal.close()


def test_the_wal_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_wal, "MAX_BYTES", 100)
    wal = Wal(tmp_path, "boot")
    wal.open()
    wal.append(b"y" * 80 + b"\n")
    with pytest.raises(OSError, match="cap"):
        wal.append(b"y" * 80 + b"\n")
    wal.close()


async def test_over_the_cap_events_are_still_delivered_and_counted(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_wal, "MAX_BYTES", 10)
    fake = FakeSink()
    log = AuditLog([fake], wal_dir=tmp_path / "wal")
    await log.start()
    log.record(ctx(1), Outcome("ok", 0.0))
    await until(fake, lambda: len(fake.written) == 1)
    assert log.wal_errors == 1
    await log.aclose()


async def test_fsync_mode_waits_for_a_group_commit(tmp_path: Path) -> None:
    log = AuditLog([FakeSink()], wal_dir=tmp_path / "wal", durability="fsync")
    await log.start()
    assert log.fsync and isinstance(log.commit, GroupCommit) and log.wal is not None

    async def request(n: int) -> None:
        log.record(ctx(n), Outcome("ok", 0.0))
        await log.durable()
        assert log.wal is not None and log.wal.synced >= n  # this record (position n) is covered

    await within(asyncio.gather(*(request(n) for n in range(1, 101))))
    assert log.commit.rounds < 100  # one fsync served many records
    await log.aclose()


def test_process_mode_does_not_wait(tmp_path: Path) -> None:
    assert not AuditLog([FakeSink()], wal_dir=tmp_path / "wal").fsync


async def test_a_jsonl_sink_skips_events_it_already_has(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    events = [{"id": f"e{n}", "method": "x"} for n in range(4)]
    sink = JsonlSink(path)
    await sink.start()
    await sink.write(events[:3])
    again = JsonlSink(path, fsync=True)  # after a restart: a replay repeats e1, e2
    await again.start()
    await again.write(events[1:])
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [e["id"] for e in lines] == ["e0", "e1", "e2", "e3"] and verify_jsonl(path) == []


def test_an_unusable_wal_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(WalError, match="not writable"):
        Wal(tmp_path / "file" / "wal", "boot").preflight()


def test_the_gateway_refuses_to_start_without_a_usable_wal_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    cfg = tmp_path / "stile.yaml"
    cfg.write_text(yaml.safe_dump({"state": f"sqlite:///{tmp_path / 'stile.db'}", "upstreams": {},
                                   "audit": {"spool_dir": str(tmp_path / "file" / "spool")}}))
    proc = subprocess.run([sys.executable, "-m", "stile", "serve", "--config", str(cfg), "--port", "0"],
                          capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "error: the audit write-ahead log directory" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
