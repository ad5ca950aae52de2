# The two commands a new user needs: `make demo` and `make test`. Both set everything up first,
# on a machine with nothing but Python 3.10+ (python3 on PATH, or PYTHON=...).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# A pinned CPU build of torch first: an unpinned torch pulls a multi-gigabyte CUDA build.
TORCH  := torch==2.13.0

.PHONY: setup demo test bench schemas clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/anemoi-ckpt demo --out-dir demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_container.py

schemas: $(STAMP)
	$(BIN)/python -m anemoi_ckpt.schema_export docs/schemas

clean:
	rm -rf $(VENV) demo-output benchmarks/out .pytest_cache .hypothesis
