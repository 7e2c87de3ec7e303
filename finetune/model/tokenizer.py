"""The Llama 2 tokenizer twice: SentencePiece for Meta-exact ids, Hugging Face for TRL, padding and saving.

The Hugging Face side is built from tokenizer.model so that stock stacks reproduce SentencePiece exactly on
every chat prompt: `AutoTokenizer.from_pretrained(<adapter/ or merged/>).apply_chat_template(messages,
add_generation_prompt=True, tokenize=True)` equals `chat_format.encode_prompt`. Two things differ in the
tokenizer transformers converts by itself (measured on the bundled OpenAssistant data and synthetic text):
- after a special token ("<s>[INST]") it does not prepend "▁" (prepend_scheme "first"): every turn after the
  first starts with id 29961 "[" instead of Meta's 518 "▁[". We save `legacy: true` (transformers 5's
  LlamaTokenizer then rebuilds Metaspace with prepend_scheme "always") and write "always" into tokenizer.json
  (read as is by transformers 4 and by TGI's Rust tokenizer).
- its BPE merges rank whitespace pieces ("▁▁", "▁▁▁▁", score -1e9 in tokenizer.model) by id, so runs of spaces
  merge before "▁" joins the next word ("▁▁▁▁" + '"' instead of "▁▁▁" + '▁"'). `exact_merges` ranks merges by
  SentencePiece's scores and lets whitespace runs grow from the left, as SentencePiece's tie-break does.
What stays different (said in the model card): text that itself starts with a space (Metaspace adds no "▁"
then; SentencePiece does; never the case in a chat prompt, which starts every segment with "[INST]"), and
message text containing "<s>", "</s>" or "<unk>", which every stock stack reads as the special token.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from finetune.config import ROOT, ModelConfig, looks_local
from finetune.data import chat_format

TOKENIZER_FILES = ("tokenizer.model", "LICENSE-LLAMA2", "NOTICE", "USE_POLICY.md")
WS = "\u2581"  # SentencePiece's escaped space
# tokenizer_config.json keys every saved tokenizer carries (see the module docstring); pad is <unk>, never EOS
SAVED_CONFIG = {
    "legacy": True,
    "add_prefix_space": True,
    "add_bos_token": True,
    "add_eos_token": False,
    "pad_token": "<unk>",
    "chat_template": chat_format.CHAT_TEMPLATE,
}


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
        out_dir = Path(out_dir)
        self.hf.save_pretrained(out_dir)
        config = out_dir / "tokenizer_config.json"  # transformers does not save `legacy`; without it a reload
        saved = json.loads(config.read_text())  # falls back to prepend_scheme "first" (see module docstring)
        config.write_text(json.dumps({**saved, **SAVED_CONFIG}, indent=2, ensure_ascii=False) + "\n")
        for name in TOKENIZER_FILES:  # tokenizer.model and the Llama 2 licence files travel together
            if (self.source / name).is_file():
                shutil.copy2(self.source / name, out_dir / name)


def exact_merges(sp: spm.SentencePieceProcessor) -> list[tuple[str, str]]:
    """BPE merges with which the `tokenizers` BPE gives SentencePiece's ids for text not starting with a space.

    SentencePiece merges the adjacent pair whose joined piece scores highest, leftmost first on ties. Scores
    are unique except the whitespace-only pieces ("▁" x 2..16, all -1e9), so: every other piece in score order
    (all its splits), then the runs of spaces last, only as (▁ x a, ▁) with the longest first, which grows
    each run from the left as SentencePiece's leftmost tie-break does."""
    vocab = {sp.id_to_piece(i) for i in range(sp.get_piece_size())}
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    merges, longest_run = [], 1
    for i in sorted(normal, key=lambda i: (-sp.get_score(i), i)):
        piece = sp.id_to_piece(i)
        if set(piece) == {WS}:
            longest_run = max(longest_run, len(piece))
            continue
        merges += [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
    return merges + [(WS * a, WS) for a in range(longest_run - 1, 0, -1) if WS * (a + 1) in vocab]


# Meta's Llama 2 tokenizer.model, byte-identical to the one in every meta-llama/Llama-2-* repository (sha256
# 9e556afd..., data/llama2-tokenizer/PROVENANCE.md): no download is needed to tokenize for any Llama 2 model.
BUNDLED = ROOT / "data" / "llama2-tokenizer"


def tokenizer_dir(mcfg: ModelConfig) -> Path:
    """Folder with tokenizer.model: `model.tokenizer` (a folder, or a hub id to download from); else `model.path`
    when it is a folder holding one; else the bundled Llama 2 tokenizer (a hub id, or a checkpoint folder
    saved without its tokenizer), so preview and data preparation work offline."""
    if mcfg.tokenizer and looks_local(mcfg.tokenizer):
        return Path(mcfg.tokenizer).expanduser().resolve()
    if mcfg.tokenizer:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(mcfg.tokenizer, "tokenizer.model", revision=mcfg.revision)).parent
    own = Path(mcfg.path).expanduser()
    return own.resolve() if looks_local(mcfg.path) and (own / "tokenizer.model").is_file() else BUNDLED


def load_tokenizer(mcfg: ModelConfig) -> Tokenizer:
    """Both tokenizers from the folder's tokenizer.model (any tokenizer.json there is not used: see above)."""
    from transformers import LlamaTokenizer

    src = tokenizer_dir(mcfg)
    sp = spm.SentencePieceProcessor(model_file=str(src / "tokenizer.model"))
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    hf = LlamaTokenizer(
        vocab=vocab,
        merges=exact_merges(sp),
        legacy=True,
        add_prefix_space=True,
        unk_token=sp.id_to_piece(sp.unk_id()),
        bos_token=sp.id_to_piece(sp.bos_id()),
        eos_token=sp.id_to_piece(sp.eos_id()),
        add_bos_token=True,
        add_eos_token=False,
    )
    hf.pad_token = hf.unk_token
    hf.padding_side = "right"
    hf.chat_template = chat_format.CHAT_TEMPLATE
    return Tokenizer(hf=hf, sp=sp, source=src)
