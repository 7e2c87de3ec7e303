# make setup / demo / test. `make setup` is idempotent and fast on a CPU machine; on a machine that
# already has a CUDA torch in the active environment (VENV=... or a system python), torch is left alone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

.PHONY: setup slurm golang demo test test-fast bench clean

# With a CUDA torch in the system python (a GPU box), the venv sees it and pip keeps it.
$(BIN)/python:
	@if $(PY) -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		$(PY) -m venv --system-site-packages $(VENV); else $(PY) -m venv $(VENV); fi

# llama-cpp-python (GGUF verification) compiles llama.cpp from its sdist: CPU only, portable x86-64 (AVX2/FMA, not
# -march=native), without the multimodal library, tools and tests. Measured on the shared 2-core CI machine:
# 16.6 min wall (7.8 CPU-min, ~4 min on two idle cores); pip caches the wheel, so later setups take seconds.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

$(VENV)/.installed: $(BIN)/python pyproject.toml requirements-cpu.txt
	@if $(BIN)/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then \
		echo "CUDA torch found: keeping it"; \
		$(BIN)/pip install -q -e ".[dev,gguf]"; \
	else \
		$(BIN)/pip install -q --disable-pip-version-check -r requirements-cpu.txt && \
		$(BIN)/pip install -q --disable-pip-version-check --no-deps -e ".[dev]"; \
	fi
	@touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python -m finetune.demo

# The two-node SLURM tests (tests/integration/test_slurm.py) run real slurmctld/slurmd/munged in network
# namespaces: as root on Debian/Ubuntu, install what is missing (a no-op once installed); elsewhere they skip or
# name this target.
SLURM_PKGS := slurm-wlm munge iproute2 util-linux
slurm:
	@if [ "$$(id -u)" != 0 ]; then echo "make slurm: not root, skipping (the SLURM tests need root and skip)"; \
	elif dpkg -s $(SLURM_PKGS) >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$(SLURM_PKGS) >/dev/null && echo "installed $(SLURM_PKGS)"; } \
		|| echo "make slurm: apt-get failed; the SLURM tests fail until $(SLURM_PKGS) are installed"; \
	else echo "make slurm: no apt-get; install $(SLURM_PKGS) (slurmctld, slurmd, munged, ip, nsenter, unshare) yourself"; fi

# Go's text/template renders Ollama Modelfile templates: tests/unit/test_modelfile.py renders ours with it. As root
# with apt (CI), install golang-go if missing (35 s); elsewhere that test skips and says so.
golang:
	@if command -v go >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			golang-go >/dev/null && echo "installed golang-go"; } || echo "make golang: apt-get failed"; \
	else echo "make golang: no Go and no root apt-get; tests/unit/test_modelfile.py will skip"; fi

# One line per test file with its dots and the seconds it took, then the 15 slowest tests.
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider -o console_output_style=times --durations=15

test: setup slurm golang
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) -m "not slow" tests

clean:
	rm -rf outputs .cache
