# `make demo` and `make test` work from a fresh clone: each creates .venv,
# installs torch (pinned CPU build) first, then rlhfkit with its extras.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-long lint format bench bench-setup bench-compare clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhfkit demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

test: lint
	$(BIN)/python -m pytest -q tests

# Tests too long for the suite's 15 minutes (pytest marker `long`): ~2-3 minutes.
test-long: $(STAMP)
	RLHFKIT_LONG_TESTS=1 $(BIN)/python -m pytest -q -m long tests

bench: $(STAMP)
	$(BIN)/python bench/sft.py
	$(BIN)/python bench/rm.py
	$(BIN)/python bench/dpo.py
	$(BIN)/python bench/ppo.py
	$(BIN)/python bench/grpo.py
	$(BIN)/python bench/decoding.py

# TRL in its own venv (never a dependency of rlhfkit): the same torch build, and
# the transformers / accelerate versions of .venv, so both sides run the same code.
TRL_VENV := bench/.trl-venv
TRL_SPEC ?= trl==1.16.0
TRL_STAMP := $(TRL_VENV)/.installed
PIN = $$($(BIN)/python -c "from importlib.metadata import version; print('$(1)=='+version('$(1)'))")

$(TRL_STAMP): $(STAMP)
	test -x $(TRL_VENV)/bin/python || $(PY) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRL_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(TRL_VENV)/bin/python -m pip install --quiet "$(TRL_SPEC)" "$(call PIN,transformers)" \
		"$(call PIN,accelerate)" "$(call PIN,datasets)" "$(TORCH_SPEC)"
	touch $(TRL_STAMP)

bench-setup: $(TRL_STAMP)

bench-compare: $(TRL_STAMP)
	$(BIN)/python bench/compare_trl.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
