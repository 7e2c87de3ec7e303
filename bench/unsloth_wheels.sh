#!/usr/bin/env bash
# The benchmark's unsloth arm for the GPU machine (which reaches no registry): unsloth and the pins it needs,
# installed here for that machine's Python 3.12 into one folder and packed as .whl/unsloth-site.tar.gz (~10 MB; the
# GPU machine's run carries at most 64 MiB in all). unsloth 2026.10.9 pins transformers <= 5.17, trl <= 1.15 and
# datasets < 5, below this project's, so bench/gpu_session.sh unpacks it into a folder of its own (UNSLOTH_SITE)
# that only the unsloth arm's process sees; the machine's own torch, triton, transformers (5.17), peft, accelerate,
# bitsandbytes and huggingface_hub are used. Left out: unsloth's web studio and CLI (82 MB), torchao (QAT and
# exports) and hf_transfer (downloads): the arm uses none of them.
# bench/prepare_gpu.sh runs it after filling .whl/ (kept out of git); alone: bash bench/unsloth_wheels.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
python3 -m pip install -q --no-deps --no-compile --target "$site" --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.3.0 dill==0.4.0 multiprocess==0.70.18 \
  tyro==1.0.17 einops==0.8.2 cut_cross_entropy==25.1.1 msgspec==0.23.0 psutil==7.2.2 regex==2026.11.19 \
  ${UNSLOTH_EXTRA_WHEELS:-}
rm -rf "${site:?}/studio" "${site:?}/unsloth_cli" "${site:?}/bin"
mkdir -p .whl
tar -czf .whl/unsloth-site.tar.gz -C "$site" .
du -h .whl/unsloth-site.tar.gz
