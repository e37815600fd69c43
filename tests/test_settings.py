"""The settings layer (settings/): one declaration per variable, clear refusals, the docs written from it.

Server-less: `make check` runs it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from settings import SettingsError, load
from settings.base import declared, meta
from settings.docs import OPERATIONS, rendered
from settings.executor import GROUPS, ConfirmationSettings, ProcessSettings, RpcSettings, TpuSettings
from settings.policy import PolicySettings
from worker import cli
from worker.config import ExecutorConfig

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_tables_are_the_declarations():
    text = OPERATIONS.read_text()
    assert rendered(text) == text, "docs/operations.md differs from the declarations in settings/: run `make docs`"


def test_every_setting_is_declared_once_with_a_doc():
    names = [meta(info)["env"] for group in (*GROUPS, PolicySettings) for _, info in declared(group)]
    assert len(names) == len(set(names)), "a variable declared twice"
    for group in (*GROUPS, PolicySettings):
        for name, info in declared(group):
            assert info.description, f"{group.__name__}.{name} has no doc"


def test_defaults_in_code_are_the_declared_ones():
    assert ExecutorConfig() == ExecutorConfig.from_environment({})
    assert PolicySettings() == PolicySettings.from_environment({})


def test_the_config_is_made_of_the_groups_and_built_in_code_reads_no_environment(monkeypatch):
    """`ExecutorConfig` inherits the declared groups' fields; built in code (`dev`, tests) it takes the
    defaults and what it is given, never the process's environment, and refuses a misspelt keyword."""
    monkeypatch.setenv("RPC_ENDPOINT", "http://elsewhere:1")
    assert ExecutorConfig().rpc_endpoint == RpcSettings.model_fields["rpc_endpoint"].default
    assert load(RpcSettings).rpc_endpoint == "http://elsewhere:1"  # what the environment says, read only when asked
    assert set(ExecutorConfig.__bases__) <= set(GROUPS), "every group of the config is in the docs' table and known to check_names"
    with pytest.raises(ValidationError, match="rpc_endpont"):
        ExecutorConfig(rpc_endpont="http://typo:1")


def test_a_malformed_value_names_the_variable_what_it_must_be_and_what_was_given():
    with pytest.raises(SettingsError, match=r"^JITO_TIP_BASE must be an integer, got 'ten'$"):
        ExecutorConfig.from_environment({"JITO_TIP_BASE": "ten"})
    with pytest.raises(SettingsError, match=r"^SOL_PRICE_USD must be a number, got 'cheap'$"):
        ExecutorConfig.from_environment({"SOL_PRICE_USD": "cheap"})
    with pytest.raises(SettingsError, match=r"NATS_REPLICAS must be 1 to 5 \(JetStream's limit\), got '7'"):
        ExecutorConfig.from_environment({"NATS_REPLICAS": "7"})
    with pytest.raises(SettingsError, match=r"POLICY_MAX_SOL_PER_PLAN must be a non-negative amount of SOL, got '-1'"):
        PolicySettings.from_environment({"POLICY_MAX_SOL_PER_PLAN": "-1"})
    assert isinstance(SettingsError("x"), ValueError), "a ValueError, never SystemExit"


def test_an_enum_out_of_range_lists_its_choices():
    with pytest.raises(SettingsError, match=r"^CONFIRMATION_COMMITMENT must be processed, confirmed or finalized, got 'final'$"):
        ExecutorConfig.from_environment({"CONFIRMATION_COMMITMENT": "final"})
    with pytest.raises(SettingsError, match=r"^EVENT_LOOP must be uvloop or asyncio, got 'trio'$"):
        load(ProcessSettings, {"EVENT_LOOP": "trio"})
    with pytest.raises(SettingsError, match=r"^HFT_TEST_CRASH_AFTER must be received, sign, submit, confirm or publish, got 'sending'$"):
        load(ProcessSettings, {"HFT_TEST_CRASH_AFTER": "sending"})
    assert load(ProcessSettings, {"HFT_TEST_CRASH_AFTER": "submit"}).test_crash_after == "submit"
    assert load(ProcessSettings, {}).test_crash_after is None


def test_a_mistyped_name_is_refused_with_did_you_mean():
    with pytest.raises(SettingsError, match=r"^JITO_TIPBASE is not a setting: did you mean JITO_TIP_BASE\?$"):
        ExecutorConfig.from_environment({"JITO_TIPBASE": "5000"})
    with pytest.raises(SettingsError, match="did you mean POLICY_MAX_TIP_LAMPORTS"):
        ExecutorConfig.from_environment({"POLICY_MAX_TIP_LAMPORT": "5000"})
    # Other tools' variables under the same prefixes are not typos (the temporal and nats CLIs read these).
    ExecutorConfig.from_environment({"TEMPORAL_TLS_CERT_DATA": "x", "NATS_CONTEXT": "prod", "TEMPORAL_CLI_SHOW_STACKS": "1", "PATH": "/bin"})


def test_the_old_names_are_still_read_and_the_unit_named_one_wins():
    assert load(ConfirmationSettings, {"CONFIRMATION_TIMEOUT": "5000"}).confirmation_timeout_ms == 5000
    assert load(TpuSettings, {"TPU_TIMEOUT": "700"}).tpu_timeout_ms == 700
    assert load(ConfirmationSettings, {"CONFIRMATION_TIMEOUT_MS": "6000", "CONFIRMATION_TIMEOUT": "5000"}).confirmation_timeout_ms == 6000
    config = ExecutorConfig.from_environment({"TPU_TIMEOUT_MS": "900", "CONFIRMATION_TIMEOUT": "4000"})
    assert (config.tpu_timeout_ms, config.confirmation_timeout_ms) == (900, 4000)
    with pytest.raises(SettingsError, match=r"^CONFIRMATION_TIMEOUT must be an integer, got '5s'$"):
        load(ConfirmationSettings, {"CONFIRMATION_TIMEOUT": "5s"})  # the error names the name that was given


@pytest.mark.parametrize(("text", "value"), [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("false", False), ("no", False), ("Off", False)])
def test_one_boolean_grammar_for_every_flag(text, value):
    config = ExecutorConfig.from_environment({"TEMPORAL_TLS": text, "PRIORITY_FEE_CONGESTION": text, "HISTORY_ENCRYPTION": text, "HISTORY_KEYS": ""})
    assert config.temporal_tls is config.priority_fee_congestion is config.history_encryption is value
    assert PolicySettings.from_environment({"POLICY_SIMULATE": text}).simulate is value


def test_a_blank_value_is_unset():
    config = ExecutorConfig.from_environment({"JITO_TIP_BASE": "", "RPC_WS_ENDPOINT": " ", "TEMPORAL_TLS": ""})
    assert (config.jito_tip_base, config.rpc_ws_endpoint, config.temporal_tls) == (10_000, None, False)


def test_only_the_cli_exits():
    """Library code raises (settings.CommandError); worker/cli.py alone turns it into an exit."""
    exits = sorted(
        str(path.relative_to(ROOT))
        for package in ("settings", "venue", "workflows", "executor", "activities", "worker", "devtools", "bench", "chaos", "localnet")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"^\s*raise\s+SystemExit\b", path.read_text(), re.M)
    )
    assert exits == ["worker/cli.py"]


def test_the_cli_exits_with_the_refusal(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["history-key", "--id", "not an id!"])
    assert "history key id" in str(stopped.value.code)  # SystemExit(message): status 1, the message on stderr


def test_the_policy_defaults_are_the_programs_the_rules_decode():
    """settings/policy.py holds the default program list (settings may not import executor/); the rules
    name the same programs. Until executor/policy imports the list from settings, the two must agree."""
    from executor.policy import DEFAULT_PROGRAMS as DECODED
    from settings.policy import DEFAULT_PROGRAMS

    assert DEFAULT_PROGRAMS == DECODED and PolicySettings().allowed_programs == DECODED
