#!/usr/bin/env bash
# The whole GPU session in one command (one H100/H200, < 10 minutes): the throughput benchmark first
# (bench/gpu_session.sh, BUDGET seconds), then the CUDA-only tests with the time left, reusing the random 7B the
# benchmark wrote: FSDP-QLoRA (tiny and 7B-shaped), bf16 export, eval/chat on CUDA.
#   run: bash bench/gpu_all.sh   (carry .whl/, prepared here by bench/prepare_gpu.sh)
set -uo pipefail
res=${OUT:-bench/results/gpu}
mkdir -p "$res/tests"
KEEP_7B=1 BUDGET=${BUDGET:-380} bash bench/gpu_session.sh
export PYTHONPATH=/tmp/site:$PWD FINETUNE_CACHE=/tmp/ftcache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  HF_DATASETS_OFFLINE=1 TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
python3 -c "import torch, transformers, peft, trl, bitsandbytes; print(torch.__version__, transformers.__version__, peft.__version__, trl.__version__, bitsandbytes.__version__, torch.cuda.get_device_name())" | tee "$res/versions.txt"
for t in test_fsdp test_export_gpu test_eval_chat_gpu; do
  left=$((${DEADLINE:-575} - SECONDS))
  (( left < 30 )) && { echo "SKIPPED $t: ${left}s left"; continue; }
  echo "== $t ($SECONDS s, limit ${left}s)"
  timeout "$left" python3 -m pytest -x -q -s -p no:cacheprovider tests/gpu/$t.py > "$res/tests/$t.log" 2>&1
  echo "   exit $?"; grep -E "passed|failed|error|losses|Error" "$res/tests/$t.log" | tail -6
done
