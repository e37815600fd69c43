# The two quick-start commands: `make run` and `make test`. Each creates .venv and
# installs what it needs on a machine that has only Python 3.11+, pip and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# The tests that need no NATS or local cluster: `make check` runs them after ruff. Only the workflow tier
# (tests/test_workflow_logic.py) starts a server: an in-memory Temporal dev server, for about 5 s.
CHECK_TESTS := tests/test_chaos_checker.py tests/test_keystore.py tests/test_klend.py tests/test_metrics.py \
               tests/test_history_codec.py tests/test_cli_imports.py tests/test_image.py \
               tests/test_plan_activities.py tests/test_cancellation.py tests/test_wire_limits.py tests/test_bridge_poison.py tests/test_connection_lost.py \
               tests/test_signature_watcher.py tests/test_urls.py tests/test_settle.py tests/test_halt_acknowledgment.py \
               tests/test_wire_state.py \
               tests/test_workflow_logic.py tests/test_workflow_replay.py \
               tests/test_settings.py

.PHONY: run test check docs localnet clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/hft-executor dev --demo 20

test: $(BIN)/.installed
	$(BIN)/python -m pytest

check: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q $(CHECK_TESTS)

# The configuration tables of docs/operations.md, written from the declarations in settings/ (test_settings.py checks them).
docs: $(BIN)/.installed
	$(BIN)/python -m settings.docs

localnet: $(BIN)/.installed
	$(BIN)/hft-executor localnet

clean:
	rm -rf $(VENV) .data .pytest_cache
