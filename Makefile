# Set-up and everyday commands. `make test` works on a fresh clone: it creates .venv,
# installs the pinned CPU torch first (an unpinned one would pull CUDA wheels), then bastion.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install test generate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

generate: install
	$(BIN)/bastion generate "The function returns"

clean:
	rm -rf $(VENV) build *.egg-info
