#!/usr/bin/env bash
# Peak memory of DPO against SFT on the same model and the same texts: is there a second model in memory?
# A small random-init Llama-2 architecture (hidden 1024, 8 layers, 32000 vocab: 166.7M parameters, 667 MB in
# float32), LoRA and QLoRA. SFT trains the chosen answers of the bundled Orca pairs (2 sequences per step), DPO
# trains the pairs (1 pair = the same 2 sequences per step); 256 tokens, 2 steps, no eval, no samples.
#   CPU: bash bench/dpo_memory.sh                 -> peak RSS (GNU time %M)
#   GPU: GPU=1 PYTHON=python3 bash bench/dpo_memory.sh  -> also peak GPU memory used (nvidia-smi, every 0.2 s)
# Results in bench/results/dpo_memory/ (one log per run, summary.txt); bench/dpo_memory.md records them.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-bench/results}/dpo_memory
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TQDM_DISABLE=1 WANDB_MODE=disabled FINETUNE_CACHE=${FINETUNE_CACHE:-.cache/bench}
py=${PYTHON:-.venv/bin/python}
small="model.arch.hidden_size=1024 model.arch.intermediate_size=2752 model.arch.num_layers=8 model.arch.num_heads=16
  model.arch.num_kv_heads=16 model.path=$FINETUNE_CACHE/models/llama2-small"
orca=data/dpo/orca-dpo-pairs-validation/validation.jsonl
common="trainer.max_steps=2 trainer.logging_steps=1 trainer.save_steps=100 data.max_samples=32 data.eval_fraction=0
  data.max_length=256 data.too_long=truncate trainer.grad_accum=1 eval.samples=0 overwrite=true"
sft="recipe=tiny_lora data=jsonl data.path=$orca data.fields.prompt=input.messages
  data.fields.response=preferred_output.0.content trainer.micro_batch_size=2"
dpo="recipe=tiny_dpo data.max_prompt_length=null trainer.micro_batch_size=1"

run() {  # run NAME ARGS...: one training run, its peak RSS (and peak GPU memory used with GPU=1)
  local name=$1; shift
  local poll=""
  if [[ -n "${GPU:-}" ]]; then
    (while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done) \
      > "$out/$name.gpu" 2>/dev/null & poll=$!
  fi
  local timer=(/usr/bin/time -f "$name peak_rss_kb=%M wall_s=%e")
  [[ -x /usr/bin/time ]] || timer=()  # a bare GPU machine may lack GNU time: GPU memory only
  "${timer[@]}" "$py" finetune/train.py "$@" output_dir="/tmp/dpo_memory/$name" > "$out/$name.log" 2>&1
  local rc=$? line; line=$(tail -1 "$out/$name.log")
  [[ ${#timer[@]} -gt 0 ]] || line="$name exit=$rc"
  if [[ -n "$poll" ]]; then
    kill "$poll"
    line="$line peak_gpu_used_mib=$(sort -n "$out/$name.gpu" | tail -1)"
  fi
  echo "$line" | tee -a "$out/summary.txt"
}

for q in none nf4; do
  # shellcheck disable=SC2086  # the override lists split into words on purpose
  run "sft_$q" quant=$q $small $common $sft
  # shellcheck disable=SC2086
  run "dpo_$q" quant=$q $small $common $dpo
done
