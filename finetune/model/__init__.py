"""The model: the Llama 2 tokenizer (SentencePiece + Hugging Face), the base (16-bit, or 4/8-bit through
bitsandbytes; random weights of the real architecture on request), LoRA through peft, and generation.

May import config, runtime and data (the chat format's special ids); never training, runs, ship, planning or
sweeps.
"""
