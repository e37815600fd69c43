"""The history codec and its keys, without servers: formats, rotation, refusals, and no key in any error."""
from __future__ import annotations

import base64
import copy
import json
import os
import pickle
import subprocess
import sys

import pytest
from solders.keypair import Keypair
from temporalio.api.common.v1 import Payload

from settings import SettingsError
from executor.keystore import KeyStore
from tests.stack import ROOT
from worker.config import ExecutorConfig
from worker.main import check_history_encryption
from workflows.codec import (
    ENCODING,
    KEY_ID_METADATA,
    HistoryCodec,
    HistoryKeyError,
    PLAIN_MARK,
    HistoryKeys,
    ensure_key_file,
    new_key_line,
)

PLAIN = Payload(metadata={"encoding": b"json/plain"}, data=b'{"planId":"p-1","routes":[]}')


def key_of(line: str) -> str:
    return line.split(":", 1)[1]


async def test_encrypts_with_the_first_key_keeps_the_encoding_inside_and_reads_back():
    a, b = new_key_line("a"), new_key_line("b")
    codec = HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": f"{b},{a}"}))
    [sealed] = await codec.encode([PLAIN])
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID_METADATA] == b"b"
    assert set(sealed.metadata) == {"encoding", KEY_ID_METADATA}, "the original encoding is only inside the ciphertext"
    assert b"p-1" not in sealed.data and len(sealed.data) == 12 + len(PLAIN.SerializeToString()) + 16
    [again] = await codec.encode([PLAIN])
    assert again.data[:12] != sealed.data[:12], "a fresh nonce per payload"
    assert (await codec.decode([sealed])) == [PLAIN]
    assert (await codec.encode([sealed])) == [sealed], "ciphertext is never wrapped twice"
    [marked] = await codec.decode([PLAIN])  # issue 20: a client without the keys, while encryption is on
    assert marked.metadata[PLAIN_MARK] == b"1" and marked.data == PLAIN.data
    reader = HistoryCodec(codec.keys, encrypt=False)
    assert (await reader.decode([PLAIN])) == [PLAIN], "encryption off: plain payloads (written before it was on) pass through"
    shown = HistoryCodec(codec.keys, mark_plain=False)
    assert (await shown.decode([PLAIN])) == [PLAIN], "the codec server shows a plain payload as it is"


async def test_rotation_new_key_first_old_histories_stay_readable_and_a_missing_key_is_named():
    a, b = new_key_line("key-a"), new_key_line("key-b")
    [written_with_a] = await HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": a})).encode([PLAIN])
    rotated = HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": f"{b},{a}"}))
    assert (await rotated.decode([written_with_a])) == [PLAIN]
    [written_with_b] = await rotated.encode([PLAIN])
    assert written_with_b.metadata[KEY_ID_METADATA] == b"key-b"
    with pytest.raises(HistoryKeyError) as missing:
        await HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": a})).decode([written_with_b])
    assert "'key-b', which is not loaded (loaded: key-a)" in str(missing.value)
    assert key_of(a) not in str(missing.value) and key_of(b) not in str(missing.value)


async def test_altered_ciphertext_or_another_key_under_the_same_id_fails_authentication():
    line = new_key_line("k")
    codec = HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": line}))
    [sealed] = await codec.encode([PLAIN])
    tampered = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + bytes([sealed.data[-1] ^ 1]))
    impostor = HistoryCodec(HistoryKeys.from_environment({"HISTORY_KEYS": new_key_line("k")}))
    for codec_, payload in ((codec, tampered), (impostor, sealed)):
        with pytest.raises(HistoryKeyError, match="failed authentication") as failed:
            await codec_.decode([payload])
        assert key_of(line) not in str(failed.value)


async def test_decrypt_only_when_encryption_is_off_with_keys_loaded():
    line = new_key_line("old")
    keys = HistoryKeys.from_environment({"HISTORY_KEYS": line})
    [sealed] = await HistoryCodec(keys).encode([PLAIN])
    reader = HistoryCodec(keys, encrypt=False)
    assert (await reader.encode([PLAIN])) == [PLAIN]
    assert (await reader.decode([sealed])) == [PLAIN]


def test_key_sources_order_and_file(tmp_path):
    a, b, c = new_key_line("a"), new_key_line("b"), new_key_line("c")
    path = tmp_path / "keys"
    path.write_text(f"# rotation: newest first\n\n{b}\n{c}\n")
    path.chmod(0o600)
    keys = HistoryKeys.from_environment({"HISTORY_KEYS": a, "HISTORY_KEYS_FILE": str(path)})
    assert keys.ids == ("a", "b", "c") and keys.current == "a"
    assert HistoryKeys.from_environment({"HISTORY_KEYS_FILE": str(path)}).current == "b"
    assert HistoryKeys.from_environment({}) is None
    urlsafe = "u:" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    assert HistoryKeys.from_environment({"HISTORY_KEYS": urlsafe}).ids == ("u",)
    made = ensure_key_file(tmp_path / "made" / "history-keys", "dev-1")
    assert made.stat().st_mode & 0o777 == 0o600 and HistoryKeys.from_environment({"HISTORY_KEYS_FILE": str(made)}).ids == ("dev-1",)
    first = made.read_text()
    ensure_key_file(made, "dev-1")
    assert made.read_text() == first, "made once, then kept (older histories stay readable)"


def test_bad_keys_are_refused_without_showing_them(tmp_path):
    short = base64.b64encode(b"\x07" * 16).decode()
    good = key_of(new_key_line("x"))
    cases = {
        f"k:{short}": "not the base64 of 32 bytes",
        good: "entry 1 is not `id:base64key`",
        f"k:{good},k:{key_of(new_key_line('y'))}": "given twice",
        "k:not*base64*at*all": "not the base64 of 32 bytes",
        f"bad id:{good}": "not `id:base64key`",
    }
    for value, message in cases.items():
        with pytest.raises(HistoryKeyError) as refused:
            HistoryKeys.from_environment({"HISTORY_KEYS": value})
        assert message in str(refused.value), (value, str(refused.value))
        assert good not in str(refused.value) and short not in str(refused.value) and "base64*at" not in str(refused.value)
    loose = tmp_path / "keys"
    loose.write_text(new_key_line("k"))
    loose.chmod(0o644)
    with pytest.raises(HistoryKeyError, match="accessible by group/others .* chmod 600"):
        HistoryKeys.from_environment({"HISTORY_KEYS_FILE": str(loose)})
    with pytest.raises(SettingsError, match="HISTORY_KEYS: key 'k' is not the base64"):
        ExecutorConfig.from_environment({"HISTORY_KEYS": f"k:{short}"})
    with pytest.raises(SettingsError, match="HISTORY_ENCRYPTION must be on or off"):
        ExecutorConfig.from_environment({"HISTORY_ENCRYPTION": "maybe"})


def test_keys_show_ids_only_and_cannot_be_pickled():
    line = new_key_line("shown-id")
    keys = HistoryKeys.from_environment({"HISTORY_KEYS": line})
    config = ExecutorConfig.from_environment({"HISTORY_KEYS": line})
    secret = key_of(line)
    raw_hex = base64.b64decode(secret).hex()
    for text in (repr(keys), str(keys), repr(config), json.dumps(config.describe(), default=str), repr(HistoryCodec(keys).keys)):
        assert secret not in text and raw_hex not in text
    assert "shown-id" in repr(keys)
    for attempt in (lambda: pickle.dumps(keys), lambda: copy.deepcopy(keys), lambda: copy.copy(keys)):
        with pytest.raises(TypeError, match="cannot be pickled"):
            attempt()


def test_the_worker_refuses_no_key_and_a_wallet_key_as_history_key():
    wallet = Keypair()
    store = KeyStore.from_keypairs([wallet])
    with pytest.raises(SettingsError, match="history encryption is on and no key is loaded"):
        check_history_encryption(ExecutorConfig.from_environment({}), store)
    check_history_encryption(ExecutorConfig.from_environment({"HISTORY_ENCRYPTION": "off"}), store)  # an explicit choice
    seed = base64.b64encode(bytes(wallet)[:32]).decode()
    with pytest.raises(SettingsError, match="secret key of one of the worker's wallets") as refused:
        check_history_encryption(ExecutorConfig.from_environment({"HISTORY_KEYS": f"w:{seed}"}), store)
    assert seed not in str(refused.value)
    check_history_encryption(ExecutorConfig.from_environment({"HISTORY_KEYS": new_key_line("k")}), store)


def test_worker_command_without_a_history_key_exits_saying_what_to_set(tmp_path):
    wallets = tmp_path / "wallets"
    wallets.mkdir()
    key_file = wallets / "w.json"
    key_file.write_text(json.dumps(list(bytes(Keypair()))))
    key_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HISTORY_", "WALLET_"))}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**env, "WALLET_KEYS_DIR": str(wallets), "NATS_URL": "nats://127.0.0.1:1"},
    )  # fmt: skip
    assert done.returncode == 1
    assert "no key is loaded: set HISTORY_KEYS" in done.stderr and "HISTORY_ENCRYPTION=off" in done.stderr
    assert "Traceback" not in done.stderr
    assert "history-key" in subprocess.run([sys.executable, "-m", "worker.cli", "--help"], cwd=ROOT, capture_output=True, text=True).stdout
    line = subprocess.run([sys.executable, "-m", "worker.cli", "history-key", "--id", "k9"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert HistoryKeys.from_environment({"HISTORY_KEYS": line}).ids == ("k9",)


def test_nonces_never_repeat_across_pool_refills_or_in_a_forked_child():
    from workflows import codec as module

    count = 3 * module._NoncePool.BATCH + 7
    seen = {module._NONCES.take() for _ in range(count)}
    assert len(seen) == count and {len(n) for n in seen} == {12}
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child must not continue the parent's pool, or both would hand out the same nonces
        os.write(write, module._NONCES.take())
        os._exit(0)
    os.waitpid(pid, 0)
    child, parent = os.read(read, 12), module._NONCES.take()
    os.close(read), os.close(write)
    assert child != parent and child not in seen
