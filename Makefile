# The two commands a new user needs: `make demo` and `make test`. Both set everything up first,
# on a machine with nothing but Python 3.10+ (python3 on PATH, or PYTHON=...).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# A pinned CPU build of torch first: an unpinned torch pulls a multi-gigabyte CUDA build.
TORCH  := torch==2.13.0

.PHONY: setup demo test test-anemoi bench schemas clean

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

# The anemoi integration tests (tests/test_anemoi_*.py): anemoi-models, anemoi-inference and
# anemoi-datasets in their own venv, from pinned requirements, with the local torch kept (see
# requirements/). ANEMOI_CKPT_REQUIRE_ANEMOI=1 turns a missing package into a failure, not a skip.
AVENV  := .venv-anemoi
ASTAMP := $(AVENV)/.installed-stamp

$(ASTAMP): pyproject.toml requirements/anemoi-integration.txt requirements/anemoi-integration-nodeps.txt
	$(PYTHON) -m venv $(AVENV)
	$(AVENV)/bin/python -m pip install --quiet --upgrade pip
	$(AVENV)/bin/python -m pip install --quiet $(TORCH)
	$(AVENV)/bin/python -m pip install --quiet -c requirements/torch.txt -r requirements/anemoi-integration.txt
	$(AVENV)/bin/python -m pip install --quiet --no-deps -r requirements/anemoi-integration-nodeps.txt
	$(AVENV)/bin/python -m pip install --quiet --no-deps -e .
	$(AVENV)/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	$(AVENV)/bin/python -c "import anemoi.training.losses, anemoi.training.tasks.forecaster, anemoi.training.train.methods, lightning, peft"
	touch $(ASTAMP)

test-anemoi: $(ASTAMP)
	ANEMOI_CKPT_REQUIRE_ANEMOI=1 $(AVENV)/bin/python -m pytest -q $(wildcard tests/test_anemoi_*.py) tests/test_hydra_shim.py

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_container.py

schemas: $(STAMP)
	$(BIN)/python -m anemoi_ckpt.schema_export docs/schemas

clean:
	rm -rf $(VENV) $(AVENV) demo-output benchmarks/out .pytest_cache .hypothesis
