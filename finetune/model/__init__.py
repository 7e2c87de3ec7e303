"""The model: the Llama 2 tokenizer (SentencePiece + Hugging Face), the base (16-bit, or 4/8-bit through
bitsandbytes; random weights of the real architecture on request), LoRA through peft, and generation; the
speed paths on a loaded model's instances: fused LoRA functions (fused, fused_layers), per-layer checkpointing with
offloaded inputs (checkpointing), padding-free preference batches (padding_free).

May import config, runtime and data (the chat format's special ids); never training, runs, ship, planning or
sweeps.
"""
