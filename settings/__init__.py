"""One settings layer: every environment variable the executor reads, declared once.

Each setting is a pydantic field declared with `settings.base.setting`: its environment name
(and an old name still read, where a unit was added to the name), type, unit, default and doc,
in a group per concern (`settings.executor`: worker, rpc, jito, fees, confirmation, tpu, nats,
metrics, temporal, history, codec server, process; `settings.policy`: the plan policy). The groups
are pydantic-settings `BaseSettings`, since pydantic is already the project's validation library
(the plan model); `load(Group, env)` reads one from any mapping. A malformed, out-of-range or
(by its likeness to a declared name) mistyped variable raises `SettingsError`, a ValueError that
names the variable, what it must be and what was given. Nothing here ends the process: only the
command line (`worker/cli.py`) turns a `CommandError` into an exit.

Why a package of its own, at the bottom: every package reads settings (workflows the history keys,
executor the policy, worker the rest), and `executor/` may not import `worker/`. `settings/`
imports only pydantic, the standard library, solders and `venue/` (the policy's default programs
and Jito's tip accounts are venue facts), so it sits between venue and workflows:
venue -> settings -> workflows -> executor -> activities -> worker -> devtools/bench/chaos.
`worker/config.py` `ExecutorConfig` is made of the worker's groups (a field each, by inheritance);
`NatsAuth` and `HistoryKeys` read their own groups. `python -m settings.docs` writes the tables of
docs/operations.md from these declarations; tests/test_settings.py fails when they differ.
"""
from .base import CommandError, SettingsError, check_names, flag, load

__all__ = ["CommandError", "SettingsError", "check_names", "flag", "load"]
