"""The parts of a model card that say how to use what we ship: the prompt ids each serving stack gives, the
chat format as text, and the code that loads an adapter, merged weights or GGUF files as they were trained."""
from __future__ import annotations

from typing import Optional

from finetune.config import TrainConfig
from finetune.data import chat_format


# How each stack reproduces the trained ids, and where it cannot (model/tokenizer.py and ship/modelfile.py).
PROMPT_IDS = """Stock `tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)` gives exactly
the ids training used (`finetune/data/chat_format.py`: each turn `<s>` + SentencePiece(`[INST] … [/INST] answer `)
+ `</s>`), including runs of spaces, non-ASCII text and a system prompt; so does llama.cpp with the chat template
embedded in the GGUF (tested through llama-cpp-python's `create_chat_completion` path; `llama-server --jinja`
renders the same template with its C++ engine and drops the leading `<s>` for its own BOS, not run here).
Where a stack differs:
- Tokenizing the rendered text yourself: `tokenizer(text, add_special_tokens=False)`; the default adds a second BOS.
- Message text containing the literal strings `<s>`, `</s>` or `<unk>` becomes those special tokens in every stock
  stack (transformers, vLLM, TGI, llama.cpp, Ollama); training encoded them as plain text.
- Raw text (no template) that starts with a space gets one "▁" less from the Hugging Face tokenizer than from
  SentencePiece; chat prompts never do (every turn starts with `[INST]`).
- Ollama's Modelfile template (Go) cannot strip whitespace: strip each message yourself, as Meta's format does."""


def prompt_example(system: Optional[str]) -> str:
    """The Llama 2 chat format as text, for the card (the ids come from `chat_format`)."""
    user = "What is the capital of France?"
    if system:
        user = chat_format.B_SYS + system + chat_format.E_SYS + user
    return f"<s>{chat_format.B_INST} {user} {chat_format.E_INST} The capital of France is Paris. </s>"


def load_snippet(kind: str, base_ref: str, cfg: Optional[TrainConfig] = None) -> str:
    if kind == "gguf":
        return """```bash
ollama create my-llama2 -f Modelfile.<type> && ollama run my-llama2       # Ollama (Modelfile beside each file)
llama-cli -m <run>.<type>.gguf --jinja -cnv                                 # llama.cpp, the embedded chat template
```
```python
from llama_cpp import Llama   # llama-cpp-python: create_chat_completion uses the embedded template
llm = Llama(model_path="<run>.<type>.gguf")
print(llm.create_chat_completion([{"role": "user", "content": "Hi"}])["choices"][0]["message"]["content"])
```"""
    if kind == "merged":
        return """```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/folder or its Hub repo id", dtype="auto")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder or its Hub repo id")
```"""
    if cfg is None or cfg.quant.mode == "none":
        base_line = f'base = AutoModelForCausalLM.from_pretrained("{base_ref}", dtype="auto")'
        imports, after = "from transformers import AutoModelForCausalLM, AutoTokenizer", ""
    else:  # the base as trained: a 16-bit base under a QLoRA adapter gives other logits (1.6e-2 max on a tiny run)
        imports = "import torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig"
        base_line = (f'base = AutoModelForCausalLM.from_pretrained("{base_ref}", dtype=torch.{cfg.model.dtype},\n'
                     f'    quantization_config={quant_snippet(cfg)})  # as trained')
        after = " The base is loaded quantized as in training: the adapter learned against those weights."
    return f"""```python
from peft import PeftModel
{imports}
{base_line}
model = PeftModel.from_pretrained(base, "path/to/this/folder or its Hub repo id")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder or its Hub repo id")
```
With the base available where `adapter_config.json` says (`base_model_name_or_path`),
`peft.AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")` does both steps.{after}"""


def quant_snippet(cfg: TrainConfig) -> str:
    """The BitsAndBytesConfig(...) source of the run's quantized base (model.base.bnb_config's settings)."""
    q = cfg.quant
    if q.mode == "int8":
        return "BitsAndBytesConfig(load_in_8bit=True)"
    storage = f", bnb_4bit_quant_storage=torch.{q.storage_dtype}" if q.storage_dtype else ""
    return (f'BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="{q.mode}", bnb_4bit_use_double_quant='
            f"{bool(q.double_quant)}, bnb_4bit_compute_dtype=torch.{cfg.model.dtype}{storage})")
