"""Master key sources and their errors (which never contain key material)."""

from __future__ import annotations

import base64
import secrets
import sys
from pathlib import Path

import pytest

from stile.config.model import VaultConfig
from stile.vault.keyring import Keyring, VaultError, load_keyring, new_key_text, parse_key


def test_the_environment_wins_then_the_file_then_the_command(tmp_path: Path) -> None:
    env_key, file_key, cmd_key = new_key_text(), new_key_text(), new_key_text()
    key_file = tmp_path / "master.key"
    key_file.write_text(file_key + "\n")
    cmd = [sys.executable, "-c", f"print({cmd_key!r})"]
    cfg = VaultConfig(master_key_file=str(key_file), master_key_command=cmd)
    assert load_keyring(cfg, {"STILE_MASTER_KEY": env_key}).current == base64.b64decode(env_key)
    assert load_keyring(cfg, {}).current == base64.b64decode(file_key)
    assert load_keyring(VaultConfig(master_key_command=cmd), {}).current == base64.b64decode(cmd_key)
    previous = load_keyring(VaultConfig(), {"STILE_MASTER_KEY": env_key, "STILE_MASTER_KEY_PREVIOUS": file_key})
    assert previous.previous == (base64.b64decode(file_key),)


def test_missing_or_malformed_keys_get_clear_errors_without_the_key(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="no vault master key"):
        load_keyring(VaultConfig(), {})
    short = base64.b64encode(b"x" * 16).decode()
    with pytest.raises(VaultError, match="16 bytes") as info:
        load_keyring(VaultConfig(), {"STILE_MASTER_KEY": short})
    assert short not in str(info.value)
    with pytest.raises(VaultError, match="not valid base64"):
        parse_key("not base64!!", "X")
    with pytest.raises(VaultError, match="cannot read"):
        load_keyring(VaultConfig(master_key_file=str(tmp_path / "missing")), {})
    with pytest.raises(VaultError, match="exited with 3"):
        load_keyring(VaultConfig(master_key_command=[sys.executable, "-c", "raise SystemExit(3)"]), {})
    with pytest.raises(VaultError, match="failed"):
        load_keyring(VaultConfig(master_key_command=["/nonexistent/kms-helper"]), {})


def test_envelope_round_trip_and_wrong_key() -> None:
    k1, k2 = secrets.token_bytes(32), secrets.token_bytes(32)
    kid, wrapped, ct = Keyring(k1).seal(b"value", b"aad")
    assert Keyring(k2, (k1,)).open(kid, wrapped, ct, b"aad") == b"value"
    with pytest.raises(VaultError, match="does not hold"):
        Keyring(k2).open(kid, wrapped, ct, b"aad")
    with pytest.raises(VaultError, match="does not authenticate"):
        Keyring(k1).open(kid, wrapped, ct, b"other aad")
