# Set-up and everyday commands. `make serve` and `make test` work on a fresh clone: they create
# .venv, install the pinned CPU torch first (an unpinned one would pull CUDA wheels), then bastion
# with its test and ray extras, then compile bastion's CPU kernels (once per machine).
# `make serve SERVE_ARGS="/path/to/model -dp 2"` passes flags to `bastion serve`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

PYTEST_ARGS ?= --durations=20

.PHONY: install kernels serve test generate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,ray]"
	touch $(STAMP)

install: $(STAMP)

# bastion's C++ CPU kernels, compiled once per machine (cached; a no-op when they are built)
kernels: install
	$(BIN)/python -m bastion.model.cpu_kernels

serve: kernels
	$(BIN)/bastion serve $(SERVE_ARGS)

test: kernels
	$(BIN)/python -m pytest $(PYTEST_ARGS)

generate: kernels
	$(BIN)/bastion generate "The function returns"

clean:
	rm -rf $(VENV) build *.egg-info
