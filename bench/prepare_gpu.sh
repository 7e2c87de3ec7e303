#!/usr/bin/env bash
# Prepare a GPU session here, where a package registry is reachable: fill .whl/ in the project root with the wheels
# the GPU machine lacks, for its Python 3.12 (it has torch with its triton, transformers, peft, accelerate,
# safetensors, pyarrow, pandas, xxhash, and reaches no registry), and pack unsloth for the peer arm
# (bench/unsloth_wheels.sh). Then send .whl/ with the tree; bench/gpu_session.sh installs it on the GPU side:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# Seen working on an H100 machine (torch 2.11 cu130, transformers 5.17, peft 0.21, accelerate 1.15): bitsandbytes
# 0.50.2, trl 1.16.0, datasets 5.2.0, hydra-core 1.3.8 imported and ran QLoRA.
#   bash bench/prepare_gpu.sh                    # .whl/*.whl (~48 MB) and .whl/unsloth-site.tar.gz (~7 MB)
#   NO_UNSLOTH=1 bash bench/prepare_gpu.sh       # without the unsloth arm's folder
#   EXTRA_WHEELS="name==version ..." bash bench/prepare_gpu.sh   # more packages (add their missing deps too)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.whl/' "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
  || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
mkdir -p .whl
plat=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
# The project's runtime packages the GPU machine lacks, the benchmark's and the GPU tests' (Liger for
# trainer.liger, sentencepiece/protobuf for the tokenizer, pytest for tests/gpu).
python3 -m pip download -q --no-deps "${plat[@]}" -d .whl \
  bitsandbytes==0.50.2 trl==1.16.0 datasets==5.2.0 hydra-core==1.3.8 omegaconf==2.3.0 \
  dill==0.4.0 "multiprocess<0.70.20" \
  liger-kernel==0.8.5 sentencepiece==0.2.3 protobuf==7.36.2 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 \
  pygments==2.21.0 ${EXTRA_WHEELS:-}
# hydra-core pins antlr4-python3-runtime 4.9.*, published only as a source archive: build the wheel here.
ls .whl/antlr4_python3_runtime-4.9.3-*.whl >/dev/null 2>&1 \
  || python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
[[ -n "${NO_UNSLOTH:-}" ]] || bash bench/unsloth_wheels.sh
du -sh .whl && ls .whl
