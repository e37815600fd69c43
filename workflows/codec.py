"""Encrypted history: an AES-256-GCM PayloadCodec, and the keys it uses.

Everything the executor hands Temporal as a payload (the plan it starts a workflow with,
every local activity's result, among them the signed transaction, the workflow's result,
signals, summaries, failure messages) is encrypted before it leaves the process, so the
Temporal server and its database hold ciphertext. The scheme is the one of Temporal's
samples-python `encryption` sample, so any codec server built from those samples reads it:

    metadata  {"encoding": "binary/encrypted", "encryption-key-id": <key id>}
    data      nonce (12 random bytes) || AES-256-GCM(key, nonce, the original Payload
              serialized: its own metadata, so its encoding, travels inside the ciphertext)

Several keys are loaded so keys can rotate: the first encrypts, all decrypt (a payload
names its key id). While encryption is on, a payload that is not `binary/encrypted` is
marked as such on decode (PLAIN_MARK; workflows/converter.py hands it over as `Unencrypted`)
and refused where it would move value (issue 20): whoever reaches Temporal without the keys
could otherwise start a plan in plain text and the worker would run it. The workflow ends
such a start with a failed result and sends nothing; a `halt` signal in plain text is still
obeyed (stopping is never refused: an operator without the keys is not locked out of a halt).
With HISTORY_ENCRYPTION=off (keys still loaded to read old histories) plain payloads pass
through unmarked, and so does the codec server, which only shows payloads to people.

What stays plain, because Temporal must read it: search attributes (PlanId, OpportunityId,
ExecutionMethod, PlanStatus, Wallet), the workflow id (`plan-<planId>`), workflow and
activity type names, task queue, timestamps, and an ApplicationError's type (the error
code; its message is encrypted).

Key hygiene, as in executor/keystore.py: errors name the variable, the file or the key
id, never a key; `HistoryKeys` shows only key ids and refuses to be pickled.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from settings import load
from settings.executor import HistoryKeySettings

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
# Set on decode on a payload that came in plain text while encryption is on (never written to Temporal).
PLAIN_MARK = "hft-unencrypted"
NONCE_BYTES = 12  # GCM's standard nonce; random per payload (2^-32 collision odds only after ~2^32 payloads per key)
KEY_BYTES = 32  # AES-256
KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class _NoncePool:
    """Random 12-byte nonces from the OS's CSPRNG, fetched 4096 at a time.

    os.urandom releases the GIL for its system call, and the worker encrypts on its event loop
    while workflow activations run Python in the SDK's threads: getting the GIL back can take the
    interpreter's switch interval (5 ms). Measured with one busy thread: os.urandom(12) median
    0.9 us, max 5.2 ms; AES-GCM itself does not release the GIL. One call per 4096 payloads keeps
    that stall off nearly every plan. Nonces stay uniformly random; a forked child drops the
    parent's pool so two processes never share one.
    """

    BATCH = 4096

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()  # two threads must never slice the same nonce
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        with self._lock:
            if self._at + NONCE_BYTES > len(self._pool):
                self._pool, self._at = os.urandom(NONCE_BYTES * self.BATCH), 0
            nonce = self._pool[self._at : self._at + NONCE_BYTES]
            self._at += NONCE_BYTES
            return nonce


_NONCES = _NoncePool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_NONCES._reset)


class HistoryKeyError(ValueError):
    """A history key could not be loaded. The message names where it came from, never what it holds."""


class HistoryKeys:
    """AES-256 keys by id, in order: the first encrypts, every one decrypts."""

    __slots__ = ("__ciphers", "__seed_addresses")

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise HistoryKeyError("no history key given")
        ciphers: dict[str, AESGCM] = {}
        for key_id, key in keys:
            if not KEY_ID.fullmatch(key_id):
                raise HistoryKeyError(f"history key id {key_id[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if len(key) != KEY_BYTES:
                raise HistoryKeyError(f"history key {key_id!r} must be {KEY_BYTES} bytes (AES-256), got {len(key)}")
            if key_id in ciphers:
                raise HistoryKeyError(f"history key id {key_id!r} is given twice")
            ciphers[key_id] = AESGCM(key)
        self.__ciphers = ciphers
        # Each key read as an ed25519 seed, as a Solana address: how a wallet's secret given by
        # mistake is told (see `seed_public_keys`) without keeping the raw keys around.
        from solders.keypair import Keypair

        self.__seed_addresses = frozenset(str(Keypair.from_seed(key).pubkey()) for _, key in keys)

    # --- loading --------------------------------------------------------------------------------------

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> HistoryKeys | None:
        """``HISTORY_KEYS`` (``id:base64,...``) then the lines of ``HISTORY_KEYS_FILE``; None if neither is set."""
        declared = load(HistoryKeySettings, env)
        keys: list[tuple[str, bytes]] = []
        inline = (declared.history_keys or "").strip()
        if inline:
            keys += parse_keys(inline.split(","), "HISTORY_KEYS")
        path = (declared.history_keys_file or "").strip()
        if path:
            keys += parse_keys(_read_key_file(Path(path).expanduser(), "HISTORY_KEYS_FILE").splitlines(), f"HISTORY_KEYS_FILE {path}")
        return cls(keys) if keys else None

    # --- what may leave -------------------------------------------------------------------------------

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.__ciphers)

    @property
    def current(self) -> str:
        """The id new payloads are encrypted with."""
        return next(iter(self.__ciphers))

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        key_id = self.current
        nonce = _NONCES.take()
        return key_id, nonce + self.__ciphers[key_id].encrypt(nonce, plaintext, None)

    def decrypt(self, key_id: str, data: bytes) -> bytes:
        cipher = self.__ciphers.get(key_id)
        if cipher is None:
            raise HistoryKeyError(f"payload encrypted with history key {key_id[:64]!r}, which is not loaded (loaded: {', '.join(self.ids)})")
        plaintext = None
        try:
            plaintext = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], None)
        except InvalidTag:
            pass
        if plaintext is None:
            raise HistoryKeyError(f"payload under history key {key_id!r} failed authentication (another key with that id, or altered data)")
        return plaintext

    def seed_public_keys(self) -> frozenset[str]:
        """Each key read as an ed25519 seed, as a Solana public key: a history key that is a wallet's
        secret shows up here as that wallet's address (the worker refuses it)."""
        return self.__seed_addresses

    # --- hygiene --------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"HistoryKeys(encrypts with {self.current!r}; decrypts {', '.join(map(repr, self.ids))})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("HistoryKeys holds encryption keys and cannot be pickled or copied")

    def __reduce_ex__(self, protocol):
        raise TypeError("HistoryKeys holds encryption keys and cannot be pickled or copied")

    def __getstate__(self):
        raise TypeError("HistoryKeys holds encryption keys and cannot be pickled or copied")


def parse_keys(entries: Iterable[str], source: str) -> list[tuple[str, bytes]]:
    """``id:base64`` entries (blank entries and ``#`` comments skipped). Errors name ``source``, the
    entry's position and the key id, never the key."""
    keys = []
    for position, entry in enumerate(entries, 1):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, colon, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not colon or not KEY_ID.fullmatch(key_id):
            raise HistoryKeyError(f"{source}: entry {position} is not `id:base64key` (the id: 1-64 of A-Z a-z 0-9 _ . -)")
        key = _b64(encoded.strip())
        if key is None or len(key) != KEY_BYTES:
            raise HistoryKeyError(f"{source}: key {key_id!r} is not the base64 of {KEY_BYTES} bytes")
        keys.append((key_id, key))
    return keys


def _b64(text: str) -> bytes | None:
    raw = None
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError):
        pass  # raised outside the except: nothing chains the decoder's view of the text into a traceback
    return raw


def _read_key_file(path: Path, variable: str) -> str:
    mode = None
    try:
        mode = path.stat().st_mode
    except OSError:
        pass
    if mode is None:
        raise HistoryKeyError(f"{variable}={path}: no such file")
    if os.name != "nt" and mode & 0o077:
        raise HistoryKeyError(
            f"{variable}={path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); refusing to load it. Fix: chmod 600 {path}"
        )
    text = None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    if text is None:
        raise HistoryKeyError(f"{variable}={path} is not readable as text")
    return text


def new_key_line(key_id: str) -> str:
    """A fresh random key as one `id:base64` line (what HISTORY_KEYS and HISTORY_KEYS_FILE take)."""
    if not KEY_ID.fullmatch(key_id):
        raise HistoryKeyError(f"history key id {key_id[:64]!r} must be 1-64 of A-Z a-z 0-9 _ . -")
    return f"{key_id}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def ensure_key_file(path: Path, key_id: str) -> Path:
    """A key file made once (mode 0600, created exclusively) and kept: what `dev` and the test stacks use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write("# history keys, id:base64 of 32 bytes; the first encrypts, all decrypt. Add a new key first to rotate.\n")
            file.write(new_key_line(key_id) + "\n")
    return path


class HistoryCodec(PayloadCodec):
    """AES-256-GCM over whole payloads. ``encrypt=False`` only decrypts (HISTORY_ENCRYPTION=off with
    keys still loaded, so histories written encrypted stay readable)."""

    def __init__(self, keys: HistoryKeys, *, encrypt: bool = True, mark_plain: bool | None = None) -> None:
        super().__init__()
        self.keys = keys
        self.encrypting = encrypt
        self.marking_plain = encrypt if mark_plain is None else mark_plain

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not self.encrypting:
            return list(payloads)
        return [self.encrypt_payload(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt_payload(payload) for payload in payloads]

    def encrypt_payload(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") == ENCODING:
            return payload  # already ciphertext (a RawValue passed on): never wrap it twice
        key_id, data = self.keys.encrypt(payload.SerializeToString())
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}, data=data)

    def decrypt_payload(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            if self.marking_plain:  # written by a client without the keys while encryption is on
                marked = Payload()
                marked.CopyFrom(payload)
                marked.metadata[PLAIN_MARK] = b"1"
                return marked
            return payload  # encryption off: written before it was on, or by a client without it
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        return Payload.FromString(self.keys.decrypt(key_id, payload.data))
