#!/usr/bin/env bash
# The fused path's GPU session on one GPU (H100 80GB or H200) in one short slot: the kernels and fused functions
# checked on CUDA, one profiled step per arm first (where the time goes), then random-init Llama-2 rows, each beside
# its baseline and the unsloth arm of the same run, all gated on the baseline's losses and gradient norms: 7B and 13B
# QLoRA 2 x 2048 (plain HF, unsloth, ours fused with the Triton SwiGLU), 7B LoRA bf16 (MFU), DPO 7B against TRL's
# DPOTrainer defaults, 70B QLoRA 1 x 2048 (random NF4 weights written already quantized: peak memory and tokens/s),
# and optionally one decoder layer under torch.compile. Every stage is bounded by `timeout`; a stage that cannot fit
# is skipped and says so.
#
# Prepare here (the GPU machine reaches no registry), then carry .whl/ with the tree:
#   bash bench/prepare_gpu.sh            # .whl/*.whl (~48 MB) and .whl/unsloth-site.tar.gz (~7 MB)
# Before spending GPU time, run the CPU smoke against the GPU machine's transformers (bench/README.md):
#   pip install --no-deps --target /tmp/tf517 transformers==5.17.0
#   PYTHONPATH=/tmp/tf517 .venv/bin/python bench/train_throughput.py --smoke --arms baseline,ours,ours-fused
# On the GPU machine, from the repository root:
#   bash bench/gpu_session.sh            # BUDGET=<seconds> (default 480) bounds the stages
#   STAGES="profile_7b qlora_7b" NO_UNSLOTH=1 bash bench/gpu_session.sh   # only these stages, no unsloth arm
# Stages (this order): test_kernels_gpu test_fused_gpu profile_7b qlora_7b dpo_7b qlora_13b lora_7b qlora_70b
#   compile_7b (only when named in STAGES) test_liger.
# Results: $OUT/bench/, else bench/results/gpu/bench/: gpu.txt, <stage>.log, test_*.log, skipped.txt,
# throughput.{md,jsonl}, dpo_throughput.{md,jsonl}, profile-<arm>.txt. The device run brings back only a few files,
# so the caller keeps the session's output beside them and packs the folder into ONE tarball:
#   mkdir -p "$OUT/bench" && STAGES="..." bash bench/gpu_session.sh 2>&1 | tee "$OUT/bench/session.log"; \
#     tar -czf "$OUT/bench.tar.gz" -C "$OUT" bench && rm -rf "$OUT/bench"
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-480}
res=${OUT:-bench/results/gpu}/bench
mkdir -p "$res"

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
if [[ -f .whl/unsloth-site.tar.gz ]]; then  # unsloth and its older pins, seen by the unsloth arm's process only
  mkdir -p /tmp/unsloth-site && tar -xzf .whl/unsloth-site.tar.gz -C /tmp/unsloth-site \
    && export UNSLOTH_SITE=/tmp/unsloth-site
fi
# Random weights go to local disk, never into the repository (7B: 13.5 GB, 13B: 26 GB).
export FINETUNE_CACHE=/tmp/ftcache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
  TQDM_DISABLE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
nvidia-smi --query-gpu=name,memory.total,power.limit,clocks.max.sm,driver_version --format=csv | tee "$res/gpu.txt"
df -h /tmp | tail -1

left() { echo $((budget - (SECONDS - start))); }
wanted() { [[ -z "${STAGES:-}" || " $STAGES " == *" $1 "* ]]; }  # STAGES unset: every stage

# stage NAME SECONDS_NEEDED SCRIPT ARGS...: run one benchmark (bench/SCRIPT.py) if the budget still holds
# SECONDS_NEEDED.
stage() {
  local name=$1 need=$2 script=$3; shift 3
  wanted "$name" || return 0
  [[ -n "${NO_UNSLOTH:-}" ]] && set -- "${@//,unsloth/}"
  if (( $(left) < need )); then
    echo "SKIPPED $name: $(left)s of the budget left, needs ~${need}s" | tee -a "$res/skipped.txt"
    return
  fi
  echo "== $name ($(date -u +%H:%M:%S), limit $(left)s)"
  timeout "$(left)" python3 "bench/$script.py" --results "$res" "$@" > "$res/$name.log" 2>&1
  echo "   exit $? after $((SECONDS - start))s total"
  grep -E "^(baseline|pad_to_max|unsloth|trl|ours[a-z0-9_-]*|profile): |model ready|memory plan|fused LoRA|Error" \
    "$res/$name.log" | tail -12
}

# pytest FILE SECONDS: a GPU test file in its own process, bounded.
gpu_test() {
  wanted "$(basename "$1" .py)" || return 0
  if (( $(left) > $2 )); then
    timeout "$2" python3 -m pytest -q -p no:cacheprovider "$1" 2>&1 | tail -4 | tee "$res/$(basename "$1" .py).log"
  else
    echo "SKIPPED $1: $(left)s left" | tee -a "$res/skipped.txt"
  fi
}

# 1. The Triton SwiGLU kernels compiled on CUDA against autograd; the fused functions against peft (float32 exact,
#    bf16 autocast no worse than peft), offloaded checkpoints: same gradients, less memory. Seconds, tiny shapes.
gpu_test tests/gpu/test_kernels_gpu.py 60
gpu_test tests/gpu/test_fused_gpu.py 90
# 2. Where the time goes, before any row: one step each under torch.profiler after 1 warmup + 2 timed steps, top 40
#    kernels by self GPU time in profile-<arm>.txt: peft's own layers without checkpointing, ours fused without
#    checkpointing, ours fused within 5.86 GB (the planner's per-layer plan, inputs offloaded).
stage profile_7b 110 train_throughput --model 7b --quant nf4 \
  --arms ours-nopack-nogc,ours-nopack-fused-nogc,ours-nopack-fused-fit6 --profile --steps 2 --warmup 1
# 3. 7B QLoRA, random full-length rows (2 x 2048, nothing to pack), same batches: plain HF (checkpointing), unsloth
#    (its loader, kernels and offloaded checkpointing, its own process), ours fused (+ Triton SwiGLU on CUDA) with
#    checkpointing, within 5.86 GB (0.7 x plain HF's 8.37 GiB), and without checkpointing.
stage qlora_7b 170 train_throughput --model 7b --quant nf4 \
  --arms baseline,ours-nopack-fused,ours-nopack-fused-fit6,ours-nopack-fused-nogc,unsloth
# 4. DPO 7B QLoRA on the bundled Orca pairs (target >= 2x TRL's real tokens/s): TRL's DPOTrainer with its
#    defaults, the recipe as shipped, fused; 2 pairs per micro-batch, 2 warmup + 8 timed steps, step-0 loss at ln 2.
stage dpo_7b 110 dpo_throughput --model 7b --arms trl,ours,ours-fused
# 5. 13B QLoRA: the 7B goes first to leave the disk to it (KEEP_7B=1 keeps it).
wanted qlora_13b && [[ -z "${KEEP_7B:-}" ]] && rm -rf "$FINETUNE_CACHE/models/random-llama2_7b"
stage qlora_13b 130 train_throughput --model 13b --quant nf4 \
  --arms baseline,ours-nopack-fused,ours-nopack-fused-fit6,unsloth
wanted qlora_13b && rm -rf "$FINETUNE_CACHE/models/random-llama2_13b"
# 6. 7B LoRA over a bf16 base (MFU; target >= 55%): plain HF, ours without checkpointing, fused without.
stage lora_7b 100 train_throughput --model 7b --quant none --arms baseline,ours-nopack-nogc,ours-nopack-fused-nogc
# 7. 70B QLoRA at 1 x 2048 (target: peak <= 46 GiB): random NF4 weights written already quantized (~37 GB on disk,
#    no 138 GB bf16 checkpoint), ours fused within 40 GB (the planner's plan) and fused with every layer checkpointed.
stage qlora_70b 240 train_throughput --model 70b --quant nf4 --micro-batch 1 --warmup 1 --steps 3 \
  --arms ours-nopack-fused,ours-nopack-fused-fit40
# 8. Optional (name it in STAGES): one decoder layer's fused path under torch.compile as an arm, 7B QLoRA.
[[ " ${STAGES:-} " == *" compile_7b "* ]] && stage compile_7b 150 train_throughput --model 7b --quant nf4 \
  --arms ours-nopack-fused-nogc,ours-nopack-fused-nogc-compile
gpu_test tests/gpu/test_liger.py 90
echo "== results ($((SECONDS - start))s)"
cat "$res/throughput.md" "$res/dpo_throughput.md" 2>/dev/null || echo "no results recorded"
ls "$res"
