"""Writer ids: one chain, one WAL directory and one spool per writer; what a restart continues."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from stile.assembly import audit_sinks
from stile.config.model import GatewayConfig
from stile.observe.audit import AuditLog
from stile.observe.audit_writers import (
    REPLICA_ENV,
    WriterIdError,
    chain_for,
    every_wal_dir,
    other_wal_dirs,
    spool_path,
    wal_dir,
    writer_id,
)
from tests.observe.test_audit_wal import crash
from tests.observe.test_spool import FakeSink


def test_the_replica_id_names_the_writer() -> None:
    assert writer_id({REPLICA_ENV: "worker-2"}, "host") == "worker-2"
    assert writer_id({}, "gw-7f9c.example.com") == "gw-7f9c.example.com"  # a restart on this host continues it
    assert writer_id({REPLICA_ENV: ""}, "box") == "box"
    assert writer_id({}, "") == "default"
    assert writer_id({}, "we ird/host") == "we_ird_host"
    assert len(writer_id({}, "h" * 300)) == 64


@pytest.mark.parametrize("bad", ["..", "../etc", "a/b", ".hidden", "x" * 65, "sp ace", "nul\x00"])
def test_a_replica_id_that_could_escape_or_confuse_is_refused(bad: str) -> None:
    with pytest.raises(WriterIdError, match="not a valid writer id"):
        writer_id({REPLICA_ENV: bad}, "host")


def test_the_configured_chain_is_shared_on_purpose() -> None:
    assert chain_for(None, "w1") == "w1"
    assert chain_for("shared", "w1") == "shared"


def test_each_writer_has_its_own_store_chain_and_spool(tmp_path: Path) -> None:
    cfg = GatewayConfig.model_validate({"audit": {"spool_dir": str(tmp_path)}})
    url = f"sqlite:///{tmp_path / 'state.db'}"
    one, two = audit_sinks(cfg, url, "w1"), audit_sinks(cfg, url, "w2")
    assert [s.inner.chain for s in one] == ["w1"] and [s.inner.chain for s in two] == ["w2"]  # type: ignore[attr-defined]
    assert one[0].spool.path != two[0].spool.path and one[0].spool.path.name == "store_sqlite@w1.spool"  # type: ignore[attr-defined]
    shared = GatewayConfig.model_validate({"audit": {"spool_dir": str(tmp_path), "chain": "all"}})
    assert [s.inner.chain for s in audit_sinks(shared, url, "w3")] == ["all"]  # type: ignore[attr-defined]


def test_a_spool_from_before_writer_ids_is_adopted_once(tmp_path: Path) -> None:
    (tmp_path / "store_sqlite.spool").write_bytes(b'{"stile_spool": "t"}\n')
    (tmp_path / "store_sqlite.spool.done").write_bytes(b"t 0")
    adopted = spool_path(tmp_path, "store:sqlite", "w1")
    assert adopted.read_bytes() == b'{"stile_spool": "t"}\n'
    assert (tmp_path / "store_sqlite@w1.spool.done").read_bytes() == b"t 0"
    assert not (tmp_path / "store_sqlite.spool").exists()
    assert not spool_path(tmp_path, "store:sqlite", "w2").exists()  # the second writer starts empty


async def test_a_writer_replays_what_dead_writers_left_in_other_directories(tmp_path: Path) -> None:
    """A worker that does not come back, and segments from the layout before writer ids, are replayed."""
    dead = AuditLog([FakeSink()], wal_dir=wal_dir(tmp_path, "gone"))
    await dead.start()
    legacy = tmp_path / "wal" / "00000000000000000001-old-000001.wal"
    legacy.write_bytes(orjson.dumps(["old-1", 1.0, None, ["ok", 0.0, "", "", "", None, None, "r", 0], None]) + b"\n")
    assert dead.wal is not None and dead.wal.live is not None
    record = orjson.dumps(["gone-1", 2.0, None, ["ok", 0.0, "", "", "", None, None, "r", 0], None]) + b"\n"
    dead.wal.append(record)
    crash(dead)  # the process dies: its lock is released, its segment stays
    assert {d.name for d in every_wal_dir(tmp_path)} == {"wal", "gone"}
    sink = FakeSink()
    log = AuditLog([sink], wal_dir=wal_dir(tmp_path, "w1"), wal_adopt=tuple(other_wal_dirs(tmp_path, "w1")))
    await log.start()
    await log.aclose()
    assert sorted(e["id"] for e in sink.written) == ["gone-1", "old-1"]
    assert not legacy.exists() and list((tmp_path / "wal" / "gone").glob("*.wal")) == []


def test_without_a_replica_id_a_restart_continues_the_host_chain(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.delenv(REPLICA_ENV, raising=False)
    cfg = GatewayConfig.model_validate({"audit": {"spool_dir": str(tmp_path)}})
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first, again = audit_sinks(cfg, url), audit_sinks(cfg, url)
    assert first[0].inner.chain == again[0].inner.chain == writer_id({}, socket.gethostname())  # type: ignore[attr-defined]
