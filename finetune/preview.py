"""See exactly what training will see: `python finetune/preview.py recipe=qlora_13b [data=...] n=3`.

Prints `n` tokenized training examples with the trained tokens highlighted (green on a terminal, ⟦…⟧ otherwise),
their token counts, a length and truncation summary, and the preflight verdict (the same checks that stop
`train.py`). The rows are what training reads (`data.load` for `trainer.kind`: the method's own encoder and length
limits, `data.max_prompt_length` included); a preference pair shows as the two sequences its trainer scores,
prompt + chosen and prompt + rejected, and an unpaired answer (KTO) as prompt + answer, marked good or bad.
`format=json` prints one JSON object per sequence instead ({"input_ids", "labels"}, -100 where masked), for
tools; the summary and verdict then go to stderr. Exits 1 when the preflight fails. Loads no weights.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from finetune import config
from finetune.config import ConfigError, TrainConfig
from finetune.runtime import console

config.register()


@dataclass
class PreviewConfig(TrainConfig):
    """The training config (so every recipe and override applies) plus what to print."""

    n: int = 3  # examples to print, from the start of the (shuffled) training split
    format: str = "text"  # text: highlighted, for people | json: one object per example, for tools


ConfigStore.instance().store(name="preview_schema", node=PreviewConfig)


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="preview")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.data import early

    early.check(dict_cfg)  # the config and the data's first records, before torch loads
    from finetune.data import load as data
    from finetune.data import preflight
    from finetune.model.tokenizer import load_tokenizer
    from finetune.training import checks

    cfg = checks.before_weights(dict_cfg)
    if cfg.format not in ("text", "json") or cfg.n < 0:
        raise ConfigError([f"format={cfg.format} n={cfg.n}: use format=text or format=json, and n >= 0"])
    tokenizer = load_tokenizer(cfg.model)
    prepared = data.load(cfg.data, tokenizer, cfg.trainer.kind)  # what train.py reads, from the same cache
    verdict = preflight.run(tokenizer, prepared.train, prepared.stats, prepared.sample, cfg.data)
    rows = prepared.train.select(range(min(cfg.n, len(prepared.train)))).to_list()
    shown = [seq for k, row in enumerate(rows) for seq in sequences(k, row)]
    if cfg.format == "json":
        for i, (_, ids, mask) in enumerate(shown):
            print(to_json(i, ids, mask))
        out = sys.stderr
    else:
        color = sys.stdout.isatty()
        for what, ids, mask in shown:
            print(f"── {what}: {len(ids)} tokens, {sum(mask)} trained ({'green' if color else 'inside ⟦…⟧'}) ──")
            print(render(tokenizer.sp, ids, mask, color) + "\n")
        out = sys.stdout
    print(f"data: {cfg.data.name}: {prepared.stats.summary()}", file=out)
    print(verdict.report(), file=out, flush=True)
    if not verdict.ok:
        sys.exit(1)


def sequences(k: int, row: dict) -> list[tuple[str, list[int], list[int]]]:
    """(what, ids, trained mask) of each sequence the trainer scores for training row `k`: SFT's conversation; a
    pair's prompt + chosen and prompt + rejected; an unpaired answer's prompt + answer. Answers are trained."""
    if "input_ids" in row:
        return [(f"example {k}", row["input_ids"], row["assistant_masks"])]
    prompt = row["llama_prompt_ids"]
    if "llama_completion_ids" in row:
        sides = [(f"example {k} ({'good' if row['label'] else 'bad'})", row["llama_completion_ids"])]
    else:
        sides = [(f"pair {k} ({side})", row[f"llama_{side}_ids"]) for side in ("chosen", "rejected")]
    return [(what, prompt + answer, [0] * len(prompt) + [1] * len(answer)) for what, answer in sides]


def to_json(index: int, ids: list[int], mask: list[int]) -> str:
    import json

    return json.dumps(
        {
            "index": index,
            "input_ids": ids,
            "labels": [t if m else -100 for t, m in zip(ids, mask)],
            "tokens": len(ids),
            "trained": sum(mask),
        }
    )


def render(sp, ids: list[int], mask: list[int], color: bool = False) -> str:
    """The tokens as text, BOS/EOS shown as <s> and </s>, trained spans highlighted."""
    from finetune.data.chat_format import BOS_ID, EOS_ID

    def mark(text: str, trained: int) -> str:
        if not trained or not text:
            return text
        return f"\033[32m{text}\033[0m" if color else f"⟦{text}⟧"

    out: list[str] = []
    run: list[tuple[int, int]] = []  # (id, trained) since the last BOS/EOS: decoded together, split by mask

    def flush() -> None:
        done, k = "", 0
        while k < len(run):
            j = k
            while j < len(run) and run[j][1] == run[k][1]:
                j += 1
            text = sp.decode([t for t, _ in run[:j]])  # decode the prefix: pieces keep their spaces
            out.append(mark(text[len(done) :], run[k][1]))
            done, k = text, j
        run.clear()

    for t, m in zip(ids, mask):
        if t in (BOS_ID, EOS_ID):
            flush()
            out.append(mark("<s>" if t == BOS_ID else "</s>", m))
        else:
            run.append((t, m))
    flush()
    return "".join(out).replace("⟧⟦", "")


if __name__ == "__main__":
    main()
