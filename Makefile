# make setup / demo / test. `make setup` is idempotent and fast on a CPU machine; on a machine that
# already has a CUDA torch in the active environment (VENV=... or a system python), torch is left alone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

.PHONY: setup demo test test-fast bench clean

# With a CUDA torch in the system python (a GPU box), the venv sees it and pip keeps it.
$(BIN)/python:
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		$(PY) -m venv --system-site-packages $(VENV); else $(PY) -m venv $(VENV); fi

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements-cpu.txt
	@if $(BIN)/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		echo "CUDA torch found: keeping it"; \
		$(BIN)/pip install -q -e ".[dev]"; \
	else \
		$(BIN)/pip install -q --disable-pip-version-check -r requirements-cpu.txt && \
		$(BIN)/pip install -q --disable-pip-version-check --no-deps -e ".[dev]"; \
	fi
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m finetune.demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests

clean:
	rm -rf outputs .cache
