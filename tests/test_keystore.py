"""KeyStore: loading from env and files, refusing loose key files, and never letting a secret out."""
from __future__ import annotations

import copy
import json
import os
import pickle
import traceback

import base58
import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import MessageV0, to_bytes_versioned
from solders.signature import Signature
from solders.system_program import TransferParams, transfer

from executor.keystore import KeyStore, KeyStoreError, load_keypair_file


def write_key_file(path, keypair: Keypair, mode: int = 0o600):
    path.write_text(json.dumps(list(bytes(keypair))))
    path.chmod(mode)
    return path


def transfer_message(payer: Keypair) -> MessageV0:
    ix = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Keypair().pubkey(), lamports=1_000))
    return MessageV0.try_compile(payer.pubkey(), [ix], [], Hash.new_unique())


def test_base58_env_vars_in_order_stopping_at_first_gap():
    a, b, c = Keypair(), Keypair(), Keypair()
    env = {"WALLET_1": str(a), "WALLET_2": str(b), "WALLET_4": str(c)}
    store = KeyStore.from_environment(env)
    assert store.public_keys() == [str(a.pubkey()), str(b.pubkey())]
    assert str(a.pubkey()) in store and str(c.pubkey()) not in store
    assert len(store) == 2


def test_wallet_variables_leave_the_process_environment_once_loaded(monkeypatch):
    """A key left in the environment is readable by every child process and /proc/<pid>/environ."""
    a, b = Keypair(), Keypair()
    monkeypatch.setenv("WALLET_1", str(a))
    monkeypatch.setenv("WALLET_2", str(b))
    monkeypatch.setenv("WALLET_KEYS_DIR_NOT_A_KEY", "kept")
    copied = dict(os.environ)  # what the CLI passes: a copy, read by the store
    store = KeyStore.from_environment(copied)
    assert store.public_keys() == [str(a.pubkey()), str(b.pubkey())]
    assert "WALLET_1" not in os.environ and "WALLET_2" not in os.environ
    assert "WALLET_1" not in copied and os.environ["WALLET_KEYS_DIR_NOT_A_KEY"] == "kept"


def test_the_tpu_identity_file_is_refused_when_loose_like_a_wallet_file(tmp_path):
    identity = Keypair()
    path = write_key_file(tmp_path / "tpu-identity.json", identity, mode=0o640)
    with pytest.raises(KeyStoreError) as refused:
        load_keypair_file(path, "TPU_IDENTITY_KEYPAIR")
    assert "chmod 600" in str(refused.value) and "TPU_IDENTITY_KEYPAIR" in str(refused.value)
    path.chmod(0o600)
    assert load_keypair_file(path, "TPU_IDENTITY_KEYPAIR").pubkey() == identity.pubkey()


def test_keypair_json_file_and_duplicates_collapse(tmp_path):
    a, b = Keypair(), Keypair()
    path = write_key_file(tmp_path / "a.json", a)
    store = KeyStore.from_environment({"WALLET_1": str(path), "WALLET_2": str(b), "WALLET_3": str(a)})
    assert store.public_keys() == [str(a.pubkey()), str(b.pubkey())]


def test_world_readable_key_file_refused_and_0600_accepted(tmp_path):
    a = Keypair()
    path = write_key_file(tmp_path / "a.json", a, mode=0o644)
    with pytest.raises(KeyStoreError) as refused:
        KeyStore.from_environment({"WALLET_1": str(path)})
    message = str(refused.value)
    assert str(path) in message and "chmod 600" in message
    assert str(a) not in message and "[" not in message  # neither the secret nor the file's contents

    path.chmod(0o600)
    assert KeyStore.from_environment({"WALLET_1": str(path)}).public_keys() == [str(a.pubkey())]


def test_group_bits_alone_are_refused(tmp_path):
    path = write_key_file(tmp_path / "a.json", Keypair(), mode=0o640)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        KeyStore.from_environment({"WALLET_1": str(path)})


def test_wallet_keys_dir(tmp_path):
    a, b, c = Keypair(), Keypair(), Keypair()
    write_key_file(tmp_path / "1.json", a)
    write_key_file(tmp_path / "2.json", b)
    (tmp_path / "notes.txt").write_text("not a key")
    store = KeyStore.from_environment({"WALLET_1": str(c), "WALLET_KEYS_DIR": str(tmp_path)})
    assert store.public_keys() == [str(c.pubkey()), str(a.pubkey()), str(b.pubkey())]

    write_key_file(tmp_path / "3.json", Keypair(), mode=0o604)
    with pytest.raises(KeyStoreError, match="3.json.*chmod 600"):
        KeyStore.from_environment({"WALLET_KEYS_DIR": str(tmp_path)})


@pytest.mark.parametrize(
    "value",
    [
        "5JtVn1mCFZ3Xq9YZtj8tDPmVQ0OIl",  # base58 alphabet excludes 0, O, I, l
        "3" * 88,  # valid base58, wrong length
        None,  # a real secret with one half altered (seed and public key disagree)
    ],
)
def test_malformed_value_is_named_never_echoed(value):
    if value is None:
        good, other = bytes(Keypair()), bytes(Keypair())
        value = base58.b58encode(good[:32] + other[32:]).decode()
    with pytest.raises(KeyStoreError) as error:
        KeyStore.from_environment({"WALLET_1": str(Keypair()), "WALLET_2": value})
    message = str(error.value)
    assert message == "WALLET_2 is neither a base58 secret key nor a readable keypair file"
    rendered = "".join(traceback.format_exception(error.value))
    for start in range(0, len(value) - 6):
        assert value[start : start + 6] not in rendered
    assert error.value.__context__ is None and error.value.__cause__ is None


def test_malformed_key_file_does_not_leak_contents(tmp_path):
    path = tmp_path / "k.json"
    secret_like = "[" + ",".join(["77"] * 63) + ", oops]"
    path.write_text(secret_like)
    path.chmod(0o600)
    with pytest.raises(KeyStoreError) as error:
        KeyStore.from_environment({"WALLET_1": str(path)})
    rendered = "".join(traceback.format_exception(error.value))
    assert "77,77" not in rendered and "oops" not in rendered
    assert str(path) in str(error.value)


def test_repr_and_str_show_public_keys_only():
    a = Keypair()
    store = KeyStore.from_keypairs([a])
    for text in (repr(store), str(store), f"{store}"):
        assert str(a.pubkey()) in text and "1 keys" in text
        assert str(a) not in text
        assert str(list(bytes(a))[:8])[1:-1] not in text
        assert bytes(a)[:32].hex() not in text


def test_cannot_be_pickled_or_copied():
    store = KeyStore.from_keypairs([Keypair()])
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError):
            pickle.dumps(store, protocol=protocol)
    with pytest.raises(TypeError):
        copy.deepcopy(store)
    assert not hasattr(store, "__dict__")


def test_sign_produces_a_verifying_transaction():
    payer = Keypair()
    store = KeyStore.from_keypairs([payer])
    message = transfer_message(payer)
    tx = store.sign(str(payer.pubkey()), message)
    assert tx.verify_with_results() == [True]
    assert tx.signatures[0].verify(payer.pubkey(), to_bytes_versioned(message))
    assert tx.signatures[0] != Signature.default()


def test_sign_unknown_wallet_names_the_public_key_only():
    store = KeyStore.from_keypairs([Keypair()])
    stranger = Keypair()
    with pytest.raises(KeyError) as error:
        store.sign(str(stranger.pubkey()), transfer_message(stranger))
    assert error.value.args[0] == f"no key for wallet {stranger.pubkey()}"
