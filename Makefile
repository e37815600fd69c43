# The two quick-start commands: `make run` and `make test`. Each creates .venv and
# installs what it needs on a machine that has only Python 3.11+, pip and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test localnet clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: $(BIN)/.installed
	$(BIN)/hft-executor dev --demo 20

test: $(BIN)/.installed
	$(BIN)/python -m pytest

localnet: $(BIN)/.installed
	$(BIN)/hft-executor localnet

clean:
	rm -rf $(VENV) .data .pytest_cache
