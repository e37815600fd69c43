"""The worker's private keys: the one place a secret key lives (docs/architecture.md section 1, promise 6).

Only public keys and signed transactions leave a ``KeyStore``. Keys come from ``WALLET_1..WALLET_N``
(a base58 64-byte secret key, as in the seed, or the path of a Solana CLI keypair file) and from every
``*.json`` file in ``WALLET_KEYS_DIR``. A key file that group or others can access is refused, as ssh
refuses a private key with loose permissions: a key readable by another local user is already leaked.

Secret hygiene, beyond not logging: errors name the variable or the file, never the value or the file's
contents, and are raised outside ``except`` blocks so no chained exception (a JSON decoder's ``doc``, a
base58 decoder's message) carries secret text into a traceback. The store refuses to be pickled, so it
cannot slip into Temporal payloads, NATS messages or a multiprocessing queue by accident.
"""
from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path

import base58
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.transaction import VersionedTransaction

SECRET_KEY_BYTES = 64  # ed25519 seed (32) + public key (32), the Solana CLI / seed format


class KeyStoreError(ValueError):
    """A key could not be loaded. The message names where it came from, never what it holds."""


class KeyStore:
    """Private keys by base58 public key, in load order. Signs; never hands a key out."""

    __slots__ = ("__keypairs",)

    def __init__(self) -> None:
        self.__keypairs: dict[str, Keypair] = {}

    # --- loading --------------------------------------------------------------------------------------

    @classmethod
    def from_keypairs(cls, keypairs: Iterable[Keypair]) -> KeyStore:
        store = cls()
        for keypair in keypairs:
            store._add(keypair)
        return store

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> KeyStore:
        """``WALLET_1..WALLET_N`` (consecutive; stops at the first missing) then ``WALLET_KEYS_DIR/*.json``.

        Once loaded, the ``WALLET_n`` variables are removed from this process's environment: a key
        left there is read by every child process, crash reporter and ``/proc/<pid>/environ``
        reader of the worker's user. Removing them from ``os.environ`` does not change what
        ``/proc/<pid>/environ`` shows (the kernel keeps the environment the process was started
        with): the worker command re-executes itself first (``reexec_without_wallet_variables``),
        and the keys reach the new image through a memory file, read here."""
        env = os.environ if env is None else env
        env = _with_handed_over_keys(env)
        store = cls()
        index = 1
        while value := env.get(f"WALLET_{index}", "").strip():
            store._add(_keypair_from_setting(f"WALLET_{index}", value))
            index += 1
        forget_wallet_variables(env)
        directory = env.get("WALLET_KEYS_DIR", "").strip()
        if directory:
            folder = Path(directory).expanduser()
            if not folder.is_dir():
                raise KeyStoreError(f"WALLET_KEYS_DIR={folder} is not a directory")
            for path in sorted(folder.glob("*.json")):
                store._add(_keypair_from_file(path, f"WALLET_KEYS_DIR file {path}"))
        return store

    def _add(self, keypair: Keypair) -> None:
        # the same key given twice (env and dir, say) is one wallet: keep its first position
        self.__keypairs.setdefault(str(keypair.pubkey()), keypair)

    # --- what may leave -------------------------------------------------------------------------------

    def public_keys(self) -> list[str]:
        return list(self.__keypairs)

    def __contains__(self, wallet: object) -> bool:
        return wallet in self.__keypairs

    def __len__(self) -> int:
        return len(self.__keypairs)

    def sign(self, wallet: str, message: MessageV0 | Message) -> VersionedTransaction:
        """``message`` signed by ``wallet``'s key (the wallet must be the message's only required signer)."""
        keypair = self.__keypairs.get(wallet)
        if keypair is None:
            raise KeyError(f"no key for wallet {wallet}")
        return VersionedTransaction(message, [keypair])

    # --- hygiene --------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"KeyStore({len(self.__keypairs)} keys: {', '.join(self.__keypairs) or '-'})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("KeyStore holds private keys and cannot be pickled or copied")

    def __reduce_ex__(self, protocol):
        raise TypeError("KeyStore holds private keys and cannot be pickled or copied")

    def __getstate__(self):
        raise TypeError("KeyStore holds private keys and cannot be pickled or copied")


#: The descriptor of the memory file holding the WALLET_n values across the re-exec (its number only).
HANDOVER_FD = "HFT_WALLET_KEYS_FD"


def wallet_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith("WALLET_") and name[7:].isdigit()}


def reexec_without_wallet_variables() -> None:
    """Replace this process by itself without the ``WALLET_n`` variables in its environment (never returns
    when there are any). The kernel shows a process's start-up environment in ``/proc/<pid>/environ`` for
    its whole life, whatever ``os.environ`` says later; only a new image gets a new one. The values go
    across in an anonymous memory file (memfd: no path, no name in the environment, gone when closed),
    whose descriptor alone is in the environment. Call before any thread or event loop exists."""
    keys = wallet_variables(os.environ)
    if not keys or not hasattr(os, "memfd_create"):
        return  # nothing to hide, or not Linux (where /proc/<pid>/environ does not exist either)
    fd = os.memfd_create("hft-wallet-keys", 0)  # inheritable is set below; CLOEXEC is not asked for
    os.write(fd, json.dumps(keys).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    env = {name: value for name, value in os.environ.items() if name not in keys}
    env[HANDOVER_FD] = str(fd)
    os.execve(sys.executable, sys.orig_argv, env)


def _with_handed_over_keys(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with the WALLET_n values the re-exec handed over, read once from their memory file, which is closed."""
    text = env.get(HANDOVER_FD) or os.environ.get(HANDOVER_FD)
    if not text:
        return env
    os.environ.pop(HANDOVER_FD, None)
    fd = int(text)
    try:
        with os.fdopen(fd, "rb") as file:
            keys = json.loads(file.read())
    except (OSError, ValueError) as error:
        raise KeyStoreError(f"{HANDOVER_FD}: the wallet keys handed over at start cannot be read ({type(error).__name__})") from None
    merged = {name: value for name, value in env.items() if name != HANDOVER_FD}
    merged.update(keys)
    return merged


def forget_wallet_variables(env: Mapping[str, str]) -> None:
    """Drop every ``WALLET_n`` from the process environment (and from ``env`` when it is a copy)."""
    for mapping in {id(os.environ): os.environ, id(env): env}.values():
        if isinstance(mapping, MutableMapping):
            for name in [name for name in mapping if name.startswith("WALLET_") and name[7:].isdigit()]:
                del mapping[name]


def load_keypair_file(path: Path, source: str) -> Keypair:
    """A keypair JSON file, refused if group or others can access it (the TPU identity is loaded so too)."""
    return _keypair_from_file(Path(path).expanduser(), source)


def _keypair_from_setting(name: str, value: str) -> Keypair:
    """A base58 secret key, else a keypair file path; an error names ``name`` only."""
    keypair = _keypair_from_base58(value)
    if keypair is not None:
        return keypair
    path = Path(value).expanduser()
    if path.is_file():  # only now is the value known to be a path, not a mistyped secret: naming it is safe
        return _keypair_from_file(path, f"{name} ({path})")
    raise KeyStoreError(f"{name} is neither a base58 secret key nor a readable keypair file")


def _keypair_from_base58(value: str) -> Keypair | None:
    raw: bytes | None = None
    try:
        raw = base58.b58decode(value)
    except ValueError:
        pass  # not base58; the caller tries it as a path (the decoder's message quotes the bad character)
    if raw is None or len(raw) != SECRET_KEY_BYTES:
        return None
    return _keypair_from_bytes(raw)


def _keypair_from_file(path: Path, source: str) -> Keypair:
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is None:
        raise KeyStoreError(f"{source}: cannot stat key file")
    if os.name != "nt" and mode & 0o077:
        raise KeyStoreError(
            f"{source}: key file {path} is accessible by group/others (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to load it. Fix: chmod 600 {path}"
        )
    text: str | None = None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    if text is None:
        raise KeyStoreError(f"{source}: key file {path} is not readable")
    raw = _bytes_from_json(text)
    keypair = _keypair_from_bytes(raw) if raw is not None else None
    if keypair is None:
        raise KeyStoreError(f"{source}: key file {path} is not a Solana keypair file (a JSON array of 64 integers 0-255)")
    return keypair


def _bytes_from_json(text: str) -> bytes | None:
    numbers = None
    try:
        numbers = json.loads(text)
    except ValueError:
        pass  # JSONDecodeError keeps the whole document in .doc: never let it propagate
    if not isinstance(numbers, list) or len(numbers) != SECRET_KEY_BYTES:
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= 255 for n in numbers):
        return None
    return bytes(numbers)


def _keypair_from_bytes(raw: bytes) -> Keypair | None:
    """None unless ``raw`` is seed + matching public key (solders checks the halves agree)."""
    keypair = None
    try:
        keypair = Keypair.from_bytes(raw)
    except ValueError:
        pass
    return keypair
