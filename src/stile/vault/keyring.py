"""Master keys and envelope encryption.

Each secret version gets its own random 32-byte data key; the value is sealed with AES-256-GCM under that
data key, and the data key is sealed (wrapped) under a master key. Every wrapped key records the id of the
master key that wrapped it (`key_id`: the first 16 hex digits of SHA-256 of the key), so a keyring holding
the current and the previous master key reads rows wrapped under either: that is how `stile secrets rewrap`
runs without downtime.

Master key sources, first found wins: `STILE_MASTER_KEY` (base64 of 32 bytes), `vault.master_key_file`,
`vault.master_key_command` (its stdout). `STILE_MASTER_KEY_PREVIOUS` adds a key that is read but never
written with. Key material never appears in an error message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stile.config.model import VaultConfig

MASTER_ENV = "STILE_MASTER_KEY"
PREVIOUS_ENV = "STILE_MASTER_KEY_PREVIOUS"
NEW_ENV = "STILE_NEW_MASTER_KEY"
_NONCE = 12


class VaultError(Exception):
    """A vault problem to show the operator (never carries key material or secret values)."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def parse_key(text: str, where: str) -> bytes:
    """The 32 bytes a base64 text encodes; VaultError naming `where` (not the text) otherwise."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise VaultError(f"{where}: not valid base64 (expected the base64 of 32 random bytes)") from None
    if len(raw) != 32:
        raise VaultError(f"{where}: decodes to {len(raw)} bytes, a master key is 32")
    return raw


def new_key_text() -> str:
    """A fresh master key, base64 (what `STILE_MASTER_KEY` holds)."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def read_key_file(path: str | Path, where: str) -> bytes:
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise VaultError(f"{where}: cannot read {path}: {why}") from None
    return parse_key(text, f"{where} ({path})")


def _run_command(argv: list[str]) -> bytes:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VaultError(f"vault.master_key_command {argv[0]!r} failed: {type(exc).__name__}") from None
    if done.returncode != 0:
        raise VaultError(f"vault.master_key_command {argv[0]!r} exited with {done.returncode}")
    try:
        text = done.stdout.decode("ascii")
    except UnicodeDecodeError:
        raise VaultError(f"vault.master_key_command {argv[0]!r}: output is not base64") from None
    return parse_key(text, "vault.master_key_command output")


@dataclass(frozen=True)
class Keyring:
    """The master key new wraps use, and every key a wrapped data key may be read with."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    def key_for(self, kid: str) -> bytes | None:
        for key in (self.current, *self.previous):
            if key_id(key) == kid:
                return key
        return None

    def seal(self, value: bytes, aad: bytes) -> tuple[str, str, str]:
        """(key id, wrapped data key, ciphertext), both base64: a fresh data key seals `value`."""
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        ciphertext = nonce + AESGCM(data_key).encrypt(nonce, value, aad)
        return (self.current_id, self.wrap(data_key, self.current_id),
                base64.b64encode(ciphertext).decode("ascii"))

    def wrap(self, data_key: bytes, kid: str) -> str:
        master = self.key_for(kid)
        assert master is not None
        nonce = os.urandom(_NONCE)
        return base64.b64encode(nonce + AESGCM(master).encrypt(nonce, data_key, kid.encode())).decode("ascii")

    def unwrap(self, kid: str, wrapped: str) -> bytes:
        master = self.key_for(kid)
        if master is None:
            raise VaultError(f"a secret is wrapped under master key {kid}, which this process does not hold "
                             f"(set {MASTER_ENV} or {PREVIOUS_ENV})")
        raw = base64.b64decode(wrapped)
        try:
            return AESGCM(master).decrypt(raw[:_NONCE], raw[_NONCE:], kid.encode())
        except InvalidTag:
            raise VaultError(f"the data key wrapped under master key {kid} does not authenticate") from None

    def open(self, kid: str, wrapped: str, ciphertext: str, aad: bytes) -> bytes:
        data_key = self.unwrap(kid, wrapped)
        raw = base64.b64decode(ciphertext)
        try:
            return AESGCM(data_key).decrypt(raw[:_NONCE], raw[_NONCE:], aad)
        except InvalidTag:
            raise VaultError("a secret's ciphertext does not authenticate (tampered or moved row)") from None


def configured(cfg: VaultConfig, env: Mapping[str, str] | None = None) -> bool:
    """True when some master key source is set."""
    env = os.environ if env is None else env
    return bool(env.get(MASTER_ENV) or cfg.master_key_file or cfg.master_key_command)


def load_keyring(cfg: VaultConfig, env: Mapping[str, str] | None = None) -> Keyring:
    """The keyring from the environment and `vault:` config; VaultError when no key is configured."""
    env = os.environ if env is None else env
    if env.get(MASTER_ENV):
        current = parse_key(env[MASTER_ENV], MASTER_ENV)
    elif cfg.master_key_file:
        current = read_key_file(cfg.master_key_file, "vault.master_key_file")
    elif cfg.master_key_command:
        current = _run_command(cfg.master_key_command)
    else:
        raise VaultError(f"no vault master key: set {MASTER_ENV} (base64 of 32 bytes), vault.master_key_file "
                         "or vault.master_key_command (generate one with `stile secrets new-master-key`)")
    previous = (parse_key(env[PREVIOUS_ENV], PREVIOUS_ENV),) if env.get(PREVIOUS_ENV) else ()
    return Keyring(current, previous)
