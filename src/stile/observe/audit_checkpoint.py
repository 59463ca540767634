"""Signed checkpoints: where a pruned chain now starts, signed so that a database writer cannot forge one.

Pruning deletes a chain's oldest events; what remains starts at `seq` K+1 with `prev` = the hash of event K.
The checkpoint row (`stile_audit_checkpoints`) records K, that hash, the time of event K, how many events
were pruned and the export file, with an HMAC-SHA256 over all of it. `stile audit verify` checks the HMAC
and then the remaining chain from it, so deleting old events without a checkpoint, editing a checkpoint,
or replacing it with an older one all show up.

The key is a 32-byte secret, identified by `kid` (a digest of the key, never the key):
- the vault secret `stile.audit-checkpoint-key` when a vault master key is configured (STILE_MASTER_KEY,
  `vault.master_key_file` or `vault.master_key_command`): every replica and `verify` on any host share it,
  and it survives master key rotation (`stile secrets rewrap`);
- otherwise `audit-checkpoint.key` in the spool directory (mode 0600), created on first use: enough for
  one host; `verify` must then run where that file is (`--config`).
Someone who can write the database but holds neither key cannot make a checkpoint verify hides anything
behind. The key file or master key holder can, as they could run Stile itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from stile.config.model import VaultConfig
from stile.vault.keyring import VaultError, load_keyring
from stile.vault.store import SecretStore

VAULT_KEY = "stile.audit-checkpoint-key"
KEY_FILE = "audit-checkpoint.key"
SIGNED = ("chain", "seq", "hash", "ts", "pruned", "at", "export")


def kid_for(source: str, key: bytes) -> str:
    return f"{source}:{hashlib.sha256(b'stile audit checkpoint kid' + key).hexdigest()[:16]}"


def payload(checkpoint: dict[str, Any]) -> bytes:
    """The signed bytes: the checkpoint's fields (SIGNED) as canonical JSON."""
    return orjson.dumps({k: checkpoint.get(k) for k in SIGNED}, option=orjson.OPT_SORT_KEYS)


@dataclass
class CheckpointKeys:
    """Keys by kid; `signing` is the kid new checkpoints are signed with (None: this process cannot sign)."""

    keys: dict[str, bytes] = field(default_factory=dict)
    signing: str | None = None
    notes: list[str] = field(default_factory=list)  # why a source was not used (for verify's messages)

    def sign(self, checkpoint: dict[str, Any]) -> tuple[str, str]:
        """(kid, signature) for a checkpoint; VaultError when no key is available."""
        if self.signing is None:
            raise VaultError("no audit checkpoint key: " + "; ".join(self.notes or ["none configured"]))
        return self.signing, hmac.new(self.keys[self.signing], payload(checkpoint), hashlib.sha256).hexdigest()

    def check(self, checkpoint: dict[str, Any]) -> bool | None:
        """True if the signature verifies, False if it does not, None if its key is not held here."""
        key = self.keys.get(str(checkpoint.get("kid")))
        if key is None:
            return None
        expected = hmac.new(key, payload(checkpoint), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, str(checkpoint.get("signature")))


def _key_file(directory: Path, create: bool) -> bytes | None:
    path = directory / KEY_FILE
    if create and not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{KEY_FILE}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # one winner when two processes create it together
        tmp.unlink()
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise VaultError(f"cannot read the audit checkpoint key {path}: {why}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise VaultError(f"the audit checkpoint key {path} is not 64 hex digits")
    return key


async def _vault_keys(url: str, vault: VaultConfig, create: bool) -> list[bytes]:
    """The vault's checkpoint key versions, newest first (created as version 1 when `create` and missing)."""
    store = SecretStore(url, load_keyring(vault))
    try:
        versions = await store.versions(VAULT_KEY, limit=10)
        if not versions and create:
            with contextlib.suppress(VaultError):  # another process created it first: use theirs
                await store.set(VAULT_KEY, secrets.token_bytes(32))
            versions = await store.versions(VAULT_KEY, limit=10)
        return [value for _, value in versions]
    finally:
        await store.aclose()


async def load_keys(url: str, vault: VaultConfig | None, spool_dir: Path | None, *, create: bool) -> CheckpointKeys:
    """Every checkpoint key this process can read; with `create`, make the signing key if there is none."""
    out = CheckpointKeys()
    if vault is not None:
        try:
            for key in await _vault_keys(url, vault, create):
                kid = kid_for("vault", key)
                out.keys[kid] = key
                out.signing = out.signing or kid
        except VaultError as exc:
            out.notes.append(f"vault: {exc}")
        except (SQLAlchemyError, OSError) as exc:
            out.notes.append(f"vault: cannot read {VAULT_KEY}: {type(exc).__name__}")
    if spool_dir is not None:
        try:
            local = _key_file(spool_dir, create and out.signing is None)
        except (VaultError, OSError) as exc:
            out.notes.append(str(exc))
        else:
            if local is not None:
                kid = kid_for("file", local)
                out.keys[kid] = local
                out.signing = out.signing or kid
            else:
                out.notes.append(f"no {spool_dir / KEY_FILE}")
    return out
