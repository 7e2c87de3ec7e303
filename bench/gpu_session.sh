#!/usr/bin/env bash
# The fused path's GPU session on one GPU (H100 80GB or H200) in ONE device call of at most 10 minutes, the most
# valuable rows first, every row beside its baseline and the unsloth arm of the same run, all gated on the baseline's
# losses and gradient norms: the SwiGLU kernels (ours against Liger's) and their CUDA tests, then 7B QLoRA 2 x 2048
# (plain HF, unsloth, ours fused within unsloth's memory and without checkpointing), then 13B the same, then one
# profiled step per arm, the fused functions' CUDA tests, DPO 7B against TRL's DPOTrainer defaults, 7B LoRA bf16
# (MFU), 70B QLoRA 1 x 2048 (random NF4 weights written already quantized), Liger's equivalence test. Every stage
# is bounded by `timeout`; one that cannot fit in what is left of BUDGET is skipped and says so.
#
# Prepare here (the GPU machine reaches no registry), then carry .whl/ with the tree:
#   bash bench/prepare_gpu.sh            # .whl/*.whl (~48 MB) and .whl/unsloth-site.tar.gz (~7 MB)
# Before spending GPU time, run the CPU smoke against the GPU machine's transformers (bench/README.md):
#   pip install --no-deps --target /tmp/tf517 transformers==5.17.0
#   PYTHONPATH=/tmp/tf517 .venv/bin/python bench/train_throughput.py --smoke --arms baseline,ours,ours-fused
# On the GPU machine, from the repository root, as the whole device call (carry .whl, timeout_s 600):
#   bash bench/gpu_session.sh            # BUDGET=<seconds> (default 540, install included) bounds the stages
#   STAGES="swiglu qlora_7b" NO_UNSLOTH=1 bash bench/gpu_session.sh   # only these stages, no unsloth arm
# Stages (this order): swiglu test_kernels_gpu qlora_7b qlora_13b profile_7b test_fused_gpu dpo_7b lora_7b
#   qlora_70b compile_7b (only when named in STAGES) test_liger.
# Results: gpu.txt, session.log (this script's output), <stage>.log, test_*.log, skipped.txt, swiglu.{md,jsonl},
# throughput.{md,jsonl}, arms.jsonl (each arm as it finishes), dpo_throughput.{md,jsonl}, profile-<arm>.txt. With
# $OUT set (the device call) they are written under /tmp/gpu-session/bench and packed into ONE $OUT/bench.tar.gz
# (the call brings back at most 8 files) after every stage and every 20 s, so a call cut off by its limit still
# brings back what it measured; without $OUT, under bench/results/gpu/bench/.
set -uo pipefail
start=$SECONDS
budget=${BUDGET:-540}
res=$([[ -n "${OUT:-}" ]] && echo /tmp/gpu-session/bench || echo bench/results/gpu/bench)
mkdir -p "$res"
exec > >(tee -a "$res/session.log") 2>&1
# pack: the results so far as $OUT/bench.tar.gz, replaced whole (GNU tar exits 1 when a log grew while read)
pack() {
  [[ -n "${OUT:-}" ]] || return 0
  tar -czf "$OUT/bench.tar.gz.part" -C "$(dirname "$res")" bench 2>/dev/null
  (( $? <= 1 )) && mv -f "$OUT/bench.tar.gz.part" "$OUT/bench.tar.gz"
}
if [[ -n "${OUT:-}" ]]; then
  ( while sleep 20; do pack; done ) &
  packer=$!
  trap 'kill $packer 2>/dev/null; pack' EXIT
fi

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
  pack
  grep -E "^(baseline|pad_to_max|unsloth|trl|liger[a-z-]*|ours[a-z0-9_-]*|profile): |model ready|memory plan|fused LoRA|Error" \
    "$res/$name.log" | tail -12
}

# pytest FILE SECONDS: a GPU test file in its own process, bounded.
gpu_test() {
  wanted "$(basename "$1" .py)" || return 0
  local log=$res/$(basename "$1" .py).log
  if (( $(left) > $2 )); then
    timeout "$2" python3 -m pytest -q -p no:cacheprovider "$1" > "$log" 2>&1
    echo "== $1: exit $? after $((SECONDS - start))s total"
    pack
    tail -4 "$log"
  else
    echo "SKIPPED $1: $(left)s left" | tee -a "$res/skipped.txt"
  fi
}

# Seconds each stage needs (H200, 2026-11-30: the session.log files under bench/results/gpu_h200_2026-11-30):
# python + imports ~15 s per process; random 7B written 15 s, 13B 30-39 s; a 7B QLoRA arm ~12 s (load 3-4 s, 11
# steps at 0.4-0.7 s), 13B ~20 s; the unsloth arm ~60 s (its own process, imports, load); pytest files 25-35 s.
# In one 10-minute call (BUDGET 540): swiglu, test_kernels_gpu, qlora_7b and qlora_13b take ~400 s; what follows
# runs in what is left.
#
# 1. SwiGLU, ours against Liger's (the faster one is what the fused MLP should run): fwd + bwd at 2 x 2048 tokens x
#    11008 (7B) and 13824 (13B), bf16, median of CUDA-event timings, outputs and gradients checked (swiglu.md).
stage swiglu 40 swiglu_bench
# 2. The Triton SwiGLU kernels compiled on CUDA against autograd (the gate for the fused MLP's kernels).
gpu_test tests/gpu/test_kernels_gpu.py 60
# 3. 7B QLoRA, random full-length rows (2 x 2048, nothing to pack), same batches: plain HF (checkpointing), unsloth
#    (its loader, kernels and offloaded checkpointing, its own process), ours fused (+ Triton SwiGLU on CUDA) within
#    5.86 GB (0.7 x plain HF's 8.37 GiB; unsloth peaked at 5.18 GiB: the planner's plan, inputs offloaded) and
#    without checkpointing (the kernels' speed alone).
stage qlora_7b 150 train_throughput --model 7b --quant nf4 \
  --arms baseline,ours-nopack-fused-fit6,ours-nopack-fused-nogc,unsloth
# 4. 13B QLoRA the same; the budget 10 GB (the planner needs 9.4 GiB at 13B; unsloth peaked at 8.85 GiB). The 7B stays
#    on disk for the stages after (7B 13.5 GB + 13B 26 GB of the 64 GB disk); the 13B goes after its stage.
stage qlora_13b 170 train_throughput --model 13b --quant nf4 --arms baseline,ours-nopack-fused-fit10,unsloth
rm -rf "$FINETUNE_CACHE/models/random-llama2_13b"
# 5. Where the time goes: one step each under torch.profiler after 1 warmup + 2 timed steps, top 40 kernels by self
#    GPU time in profile-<arm>.txt: peft's own layers without checkpointing, ours fused without checkpointing, ours
#    fused within 5.86 GB.
stage profile_7b 100 train_throughput --model 7b --quant nf4 \
  --arms ours-nopack-nogc,ours-nopack-fused-nogc,ours-nopack-fused-fit6 --profile --steps 2 --warmup 1
# 6. The fused functions against peft on CUDA (float32 exact, bf16 autocast no worse than peft), offloaded
#    checkpoints: same gradients, less memory.
gpu_test tests/gpu/test_fused_gpu.py 60
# 7. DPO 7B QLoRA on the bundled Orca pairs (target >= 2x TRL's real tokens/s): TRL's DPOTrainer with its
#    defaults, the recipe as shipped, fused; 2 pairs per micro-batch, 2 warmup + 8 timed steps, step-0 loss at ln 2.
stage dpo_7b 100 dpo_throughput --model 7b --arms trl,ours,ours-fused
# 8. 7B LoRA over a bf16 base (MFU; target >= 55%): plain HF, ours without checkpointing, fused without.
stage lora_7b 80 train_throughput --model 7b --quant none --arms baseline,ours-nopack-nogc,ours-nopack-fused-nogc
# 9. 70B QLoRA at 1 x 2048 (target: peak <= 46 GiB): random NF4 weights written already quantized (~37 GB on disk,
#    no 138 GB bf16 checkpoint), ours fused within 40 GB (the planner's plan) and fused with every layer checkpointed.
wanted qlora_70b && (( $(left) >= 240 )) && rm -rf "$FINETUNE_CACHE/models/random-llama2_7b"
stage qlora_70b 240 train_throughput --model 70b --quant nf4 --micro-batch 1 --warmup 1 --steps 3 \
  --arms ours-nopack-fused,ours-nopack-fused-fit40
# 10. Optional (name it in STAGES): one decoder layer's fused path under torch.compile as an arm, 7B QLoRA.
[[ " ${STAGES:-} " == *" compile_7b "* ]] && stage compile_7b 150 train_throughput --model 7b --quant nf4 \
  --arms ours-nopack-fused-nogc,ours-nopack-fused-nogc-compile
# 11. Liger's kernels give the eager path's loss and LoRA gradients (its own process: Liger patches classes).
gpu_test tests/gpu/test_liger.py 60
echo "== results ($((SECONDS - start))s)"
cat "$res/swiglu.md" "$res/throughput.md" "$res/dpo_throughput.md" 2>/dev/null || echo "no results recorded"
ls "$res"
