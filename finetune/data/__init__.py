"""Data in, Meta-exact Llama 2 token ids out: sources -> adapters -> chat format -> tokens (SFT, pairs or KTO's
unpaired answers) -> build (streaming, every core) -> cache -> preflight, and the prompts a run samples from. One
path for every trainer kind (`load`).

Imports `finetune.config` and `finetune.runtime` only: never the model, the trainers or the run directory
(the tokenizer it needs is handed in).
"""
