# make setup / demo / test. `make setup` is idempotent and fast on a CPU machine; on a machine that
# already has a CUDA torch in the active environment (VENV=... or a system python), torch is left alone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export WANDB_MODE ?= offline

.PHONY: setup kernels-deps system-deps system-deps-note demo test test-fast bench clean

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

# System packages two groups of tests need, installed only when asked, never by `make test`:
#   slurm-wlm munge iproute2 util-linux  tests/integration/test_slurm.py: real slurmctld/slurmd/munged in network
#                                        namespaces (also needs root to run)
#   golang-go                            tests/unit/test_modelfile.py: Go's text/template renders Ollama Modelfiles
# `make system-deps` installs what is missing with apt-get, as root (a no-op once installed); CI (.ci/run) runs it
# before `make test`. Without them those tests skip and `make test` says so first.
SLURM_PKGS := slurm-wlm munge iproute2 util-linux
SLURM_TOOLS := slurmctld slurmd munged ip nsenter unshare
GO_PKGS := golang-go

system-deps:
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make system-deps: needs root and apt-get (Debian/Ubuntu); install $(SLURM_PKGS) $(GO_PKGS) yourself"; exit 1; fi
	@need="$$(dpkg -s $(SLURM_PKGS) >/dev/null 2>&1 || echo $(SLURM_PKGS)) \
		$$(command -v go >/dev/null || [ -x /usr/lib/go/bin/go ] || echo $(GO_PKGS))"; \
	if [ -n "$$(echo $$need)" ]; then \
		echo "make system-deps: apt-get install $$need"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			$$need >/dev/null && echo "installed $$need"; fi

# Which tests will skip for want of system packages, and the one command that enables them (the tests look for the
# same programs on the same path).
SYSTEM_PATH ?= $(PATH):/usr/sbin:/sbin:/usr/lib/go/bin
system-deps-note:
	@miss=""; for t in $(SLURM_TOOLS); do PATH="$(SYSTEM_PATH)" command -v $$t >/dev/null || miss=1; done; \
	skip="$$( [ -n "$$miss" ] && echo 'tests/integration/test_slurm.py (slurm-wlm, munge)')"; \
	if ! PATH="$(SYSTEM_PATH)" command -v go >/dev/null; then \
		skip="$${skip:+$$skip and }tests/unit/test_modelfile.py's Go check (golang-go)"; fi; \
	if [ -n "$$skip" ]; then echo "make test: $$skip will skip: their system packages are not installed;" \
		"\`sudo make system-deps\` installs them"; fi

# The suite runs in TEST_WORKERS processes (pytest-xdist), one test file per worker at a time (`--dist loadfile`:
# a file's module fixtures, e.g. the SLURM test cluster, are built once), the longest files first (tests/conftest.py);
# then the 25 slowest tests. TEST_WORKERS=0 runs everything in this one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -p no:cacheprovider --durations=25 -n $(TEST_WORKERS) --dist loadfile

# The Triton kernels' CPU tests (TRITON_INTERPRET=1) need triton; a GPU machine's torch brings its own, kept as is.
kernels-deps: setup
	@$(BIN)/python -c "import triton" 2>/dev/null || \
		$(BIN)/pip install -q --disable-pip-version-check -r requirements-kernels.txt

test: setup kernels-deps system-deps-note
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) -m "not slow" tests

clean:
	rm -rf outputs .cache
