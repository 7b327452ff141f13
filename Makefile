# Set-up and everyday commands. `make serve` and `make test` work on a fresh clone: they create
# .venv, install the pinned CPU torch first (an unpinned one would pull CUDA wheels), then bastion
# with its test and ray extras.
# `make serve SERVE_ARGS="/path/to/model -dp 2"` passes flags to `bastion serve`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: install serve test generate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(BIN)/bastion serve $(SERVE_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

generate: install
	$(BIN)/bastion generate "The function returns"

clean:
	rm -rf $(VENV) build *.egg-info
