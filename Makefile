# Two commands do all the set-up on a fresh machine:  make bench   |   make test
# Each installs what it needs into .venv (torch pinned through constraints.txt), works
# offline, and is idempotent.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

MODEL ?= gemma-3-270m
TASKS ?=
LIMIT ?=
SAE ?= auto
BUDGET ?=
PROFILE ?=
ARGS ?=
# pytest workers for make test (pytest-xdist); each gets an equal share of the cores
TEST_WORKERS ?= 2

# Everything heavy stays inside the project: model cache, HF caches, pip cache, runs.
export CRL_BENCH_CACHE ?= $(CURDIR)/.cache
# Hugging Face's cache folders, not HF_HOME: the token of `huggingface-cli login` stays readable
export HF_HUB_CACHE ?= $(CRL_BENCH_CACHE)/huggingface/hub
export HF_DATASETS_CACHE ?= $(CRL_BENCH_CACHE)/huggingface/datasets
export HF_XET_CACHE ?= $(CRL_BENCH_CACHE)/huggingface/xet
export HF_ASSETS_CACHE ?= $(CRL_BENCH_CACHE)/huggingface/assets
export HF_MODULES_CACHE ?= $(CRL_BENCH_CACHE)/huggingface/modules
export PIP_CACHE_DIR ?= $(CRL_BENCH_CACHE)/pip
export MPLCONFIGDIR ?= $(CRL_BENCH_CACHE)/matplotlib
export XDG_CACHE_HOME ?= $(CRL_BENCH_CACHE)/xdg
# Offline copies of the public datasets, when present beside the project.
export CRL_BENCH_DATA ?= $(if $(wildcard $(CURDIR)/../shared/data),$(abspath $(CURDIR)/../shared/data),)
ifeq ($(CRL_BENCH_DATA),)
unexport CRL_BENCH_DATA
endif

# With the offline data beside the project, auto SAEs train on its public-domain corpus;
# without it, on the built-in corpus that ships with the install.
SAE_CORPUS ?= $(if $(CRL_BENCH_DATA),$(CRL_BENCH_DATA)/gutenberg_corpus,builtin)

BENCH_FLAGS := --model $(MODEL) --sae $(SAE) --sae-corpus $(SAE_CORPUS) $(if $(BUDGET),--budget $(BUDGET)) $(if $(PROFILE),--profile $(PROFILE)) $(if $(TASKS),--tasks $(TASKS)) $(if $(LIMIT),--limit $(LIMIT)) $(ARGS)

.PHONY: install browser lint test test-fast bench perf clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -c constraints.txt torch==2.13.0
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $@

# Headless Chromium (Debian's package) for the report's browser test; skipped when present,
# and when neither root nor password-less sudo can install it (the test then says so).
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then as=""; elif sudo -n true 2>/dev/null; then as="sudo -n"; \
	  else echo "browser: cannot install chromium without root; run: sudo apt-get install chromium"; exit 0; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $$as apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$as apt-get update -q >/dev/null 2>&1 && $$as apt-get install -y -q --no-install-recommends chromium >/dev/null; } || \
	  echo "browser: apt-get could not install chromium"; }

# Format and lint (ruff, 120 columns) and the one-way package layers (import-linter: core <-
# methods <- orchestration, no cycles); `ruff format .` fixes what the first check finds.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

test-fast: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal -m "not slow"

bench: install
	$(BIN)/crl-bench bench $(BENCH_FLAGS)

perf: install
	$(BIN)/crl-bench perf --model $(MODEL) --sae $(SAE) --sae-corpus $(SAE_CORPUS) $(ARGS)

clean:
	rm -rf $(VENV) .cache
