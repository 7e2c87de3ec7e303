"""The Llama 2 tokenizer twice: SentencePiece for Meta-exact ids, Hugging Face for TRL, padding and saving."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from finetune.config import ModelConfig, looks_local
from finetune.data import chat_format

TOKENIZER_FILES = ("tokenizer.model", "LICENSE-LLAMA2", "NOTICE", "USE_POLICY.md")


@dataclass
class Tokenizer:
    """The Llama 2 tokenizer twice: SentencePiece (`sp`, Meta-exact encoding) and Hugging Face (`hf`, for TRL,
    padding, decoding and saving). Pad is `<unk>` (id 0): distinct from EOS, so EOS stays in the labels and
    the model learns to stop, and no new embedding row is needed."""

    hf: object
    sp: spm.SentencePieceProcessor
    source: Path  # the folder holding tokenizer.model

    @property
    def pad_id(self) -> int:
        return self.hf.pad_token_id

    def save(self, out_dir: Path) -> None:
        self.hf.save_pretrained(out_dir)
        for name in TOKENIZER_FILES:  # tokenizer.model and the Llama 2 licence files travel together
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, Path(out_dir) / name)


def tokenizer_dir(mcfg: ModelConfig) -> Path:
    """Local folder with tokenizer.model: `model.tokenizer`, else `model.path` (downloaded if a hub id)."""
    where = mcfg.tokenizer or mcfg.path
    if looks_local(where):
        return Path(where).expanduser().resolve()
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(where, "tokenizer.model", revision=mcfg.revision)).parent


def load_tokenizer(mcfg: ModelConfig) -> Tokenizer:
    from transformers import AutoTokenizer, LlamaTokenizer

    src = tokenizer_dir(mcfg)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    if (src / "tokenizer_config.json").is_file():
        hf = AutoTokenizer.from_pretrained(src)
    else:  # a bare tokenizer.model: transformers converts it (LlamaTokenizer(vocab_file=) would ignore it)
        hf = LlamaTokenizer.from_pretrained(src)
    hf.pad_token = hf.unk_token
    hf.padding_side = "right"
    hf.chat_template = chat_format.CHAT_TEMPLATE
    hf.add_bos_token, hf.add_eos_token = True, False
    return Tokenizer(hf=hf, sp=sp, source=src)
