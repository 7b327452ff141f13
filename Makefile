# Set-up and everyday commands. `make serve` and `make test` work on a fresh clone: they create
# .venv, install the pinned CPU torch first (an unpinned one would pull CUDA wheels), then bastion
# with its test and ray extras, then compile bastion's CPU kernels (once per machine).
# `make serve SERVE_ARGS="/path/to/model -dp 2"` passes flags to `bastion serve`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

# two workers (CI has 2 cores), each file's tests on one worker, in order (a file's shared
# server starts once; only test_ray_backend.py starts Ray clusters, one at a time)
PYTEST_ARGS ?= -n 2 --dist loadfile --durations=30

.PHONY: install kernels serve test test-quick generate clean

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

# the unit tests only (no servers started): a quick check while iterating
test-quick: kernels
	$(BIN)/python -m pytest -n 2 --dist loadfile tests/unit

generate: kernels
	$(BIN)/bastion generate "The function returns"

clean:
	rm -rf $(VENV) build *.egg-info
