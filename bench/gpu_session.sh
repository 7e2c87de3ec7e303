#!/usr/bin/env bash
# Issue 8 on one GPU (H100 80GB or H200), in under ~8 minutes: plain HF against our training path on random-init
# Llama-2 7B (QLoRA, LoRA bf16), the Liger correctness test, OASST-length conversations, then 13B QLoRA if the
# time budget still allows. Every stage is bounded by `timeout`; a stage that cannot fit is skipped and says so.
#
# Prepare here (no registry on the GPU machine), then carry .whl/ with the tree:
#   EXTRA_WHEELS="liger-kernel==0.8.5 sentencepiece==0.2.3 protobuf==7.36.2 pytest==9.2.0 pluggy==1.7.0 \
#     iniconfig==2.3.1 pygments==2.21.0" ../shared/gpu/wheels.sh      # .whl/ is 48 MB: carry it
# On the GPU machine, from the repository root:
#   bash bench/gpu_session.sh            # BUDGET=<seconds> (default 440) bounds the benchmark stages
# Results: $OUT/bench/ (throughput.md, throughput.jsonl, one log per stage, gpu.txt), else bench/results/gpu/.
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-440}
res=${OUT:-bench/results/gpu}/bench
mkdir -p "$res"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
# Random weights go to local disk, never into the repository (7B: 13.5 GB, 13B: 26 GB).
export FINETUNE_CACHE=/tmp/ftcache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm,driver_version --format=csv | tee "$res/gpu.txt"
df -h /tmp | tail -1

# stage NAME SECONDS_NEEDED ARGS...: run one benchmark if the budget still holds SECONDS_NEEDED.
stage() {
  local name=$1 need=$2; shift 2
  local left=$((budget - (SECONDS - start)))
  if (( left < need )); then
    echo "SKIPPED $name: ${left}s of the budget left, needs ~${need}s" | tee -a "$res/skipped.txt"
    return
  fi
  echo "== $name ($(date -u +%H:%M:%S), limit ${left}s)"
  timeout "$left" python3 bench/train_throughput.py --results "$res" "$@" > "$res/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start))s total"
  grep -E "^(baseline|pad_to_max|ours[a-z0-9_-]*): |model ready|Error|error:" "$res/$name.log" | tail -8
}

# Random full-length rows (2 x 2048, nothing to pack): our kernels and memory knobs against plain HF, same batches,
# gated on equal losses and gradient norms at every step.
stage qlora_7b 200 --model 7b --quant nf4 --arms baseline,ours-nopack,ours-nopack-nogc,ours-nopack-offload-adam8bit
stage lora_7b 80 --model 7b --quant none --arms baseline,ours-nopack-nogc
# Liger in fp32 against the eager path, per LoRA tensor (the gate above compares whole runs in bf16).
left=$((budget - (SECONDS - start)))
if (( left > 60 )); then
  timeout 90 python3 -m pytest -q -p no:cacheprovider tests/gpu/test_liger.py 2>&1 | tail -3 | tee "$res/test_liger.log"
fi
# OASST-length conversations: plain HF padded to max_length against the recipe as shipped (packing on).
stage oasst_qlora_7b 100 --model 7b --quant nf4 --data oasst --arms pad_to_max,ours,ours-nogc
[[ -z "${KEEP_7B:-}" ]] && rm -rf "$FINETUNE_CACHE/models/random-llama2_7b"  # room for 13B (KEEP_7B=1: reuse after)
stage qlora_13b 200 --model 13b --quant nf4 --arms baseline,ours-nopack
echo "== results ($((SECONDS - start))s)"
cat "$res/throughput.md" 2>/dev/null || echo "no results recorded"
