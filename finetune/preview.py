"""See exactly what training will see: `python finetune/preview.py recipe=qlora_13b [data=...] n=3`.

Prints `n` tokenized training examples with the trained tokens highlighted (green on a terminal, ⟦…⟧ otherwise),
their token counts, a length and truncation summary, and the preflight verdict (the same checks that stop
`train.py`). For DPO (`trainer=dpo` or a DPO recipe) each pair shows as its two sequences, prompt + chosen and
prompt + rejected. `format=json` prints one JSON object per example instead ({"input_ids", "labels"}, -100 where
masked), for tools; the summary and verdict then go to stderr. Exits 1 when the preflight fails. Loads no weights.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
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
@hydra.main(version_base="1.3", config_path="../configs", config_name="preview")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    from finetune.data import early

    early.check(dict_cfg)  # the config and the data's first records, before torch loads
    from finetune.data import load as data, preflight
    from finetune.model.tokenizer import load_tokenizer
    from finetune.training import checks

    cfg = checks.before_weights(dict_cfg)
    if cfg.format not in ("text", "json") or cfg.n < 0:
        raise ConfigError([f"format={cfg.format} n={cfg.n}: use format=text or format=json, and n >= 0"])
    tokenizer = load_tokenizer(cfg.model)
    dcfg, pairs = cfg.data, cfg.trainer.kind in ("dpo", "orpo", "simpo", "kto")  # KTO: labelled answers, or pairs
    if pairs:  # each pair as the two sequences DPO scores: prompt + chosen, prompt + rejected (answer trained)
        dcfg = replace(cfg.data, train_on="last")
        train_ds, stats, sample = pair_rows(dcfg, tokenizer.sp)
        labels = train_ds["label"] if "label" in train_ds.column_names else None
    else:
        prepared = data.load(dcfg, tokenizer)
        train_ds, stats, sample, labels = prepared.train, prepared.stats, prepared.sample, None
    verdict = preflight.run(tokenizer, train_ds, stats, sample, dcfg)
    rows = train_ds.select(range(min(cfg.n * (2 if pairs else 1), len(train_ds)))).to_list()
    if cfg.format == "json":
        for i, row in enumerate(rows):
            print(to_json(i, row["input_ids"], row["assistant_masks"]))
        out = sys.stderr
    else:
        color = sys.stdout.isatty()
        for i, row in enumerate(rows):
            ids, mask = row["input_ids"], row["assistant_masks"]
            what = f"pair {i // 2} ({('chosen', 'rejected')[i % 2]})" if pairs and not labels else f"example {i}"
            what += f" ({'good' if labels[i] else 'bad'})" if labels else ""
            print(f"── {what}: {len(ids)} tokens, {sum(mask)} trained ({'green' if color else 'inside ⟦…⟧'}) ──")
            print(render(tokenizer.sp, ids, mask, color) + "\n")
        out = sys.stdout
    print(f"data: {cfg.data.name}: {stats.summary()}", file=out)
    print(verdict.report(), file=out, flush=True)
    if not verdict.ok:
        sys.exit(1)


def pair_rows(dcfg, sp):
    """(Dataset of prompt + chosen, prompt + rejected rows, stats, the conversations) for pairs that fit; answers
    marked good or bad (KTO's unpaired records) one row each, with their `label`."""
    from datasets import Dataset

    from finetune.data import examples, sft
    from finetune.data.load import PREFLIGHT_SAMPLE
    from finetune.data.stats import Stats

    stats, cols, convs = Stats(), {"input_ids": [], "assistant_masks": []}, []
    labels = []
    for ex in examples.examples(dcfg, stats):
        sides = [{"messages": ex["prompt"] + [{"role": "assistant", "content": ex[s]}]} for s in ("chosen", "rejected")] \
            if "prompt" in ex else [{"messages": ex["messages"]}]
        encoded = [sft.encode(side, sp, dcfg, stats) for side in sides]
        if all(encoded):  # a pair shows only when both sequences fit
            for (ids, mask), in encoded:
                cols["input_ids"].append(ids)
                cols["assistant_masks"].append(mask)
                stats.lengths.append(len(ids))
            convs += sides
            labels += [ex["label"]] if "label" in ex else []
    stats.examples = len(cols["input_ids"])
    return Dataset.from_dict({**cols, **({"label": labels} if labels else {})}), stats, convs[:PREFLIGHT_SAMPLE]


def to_json(index: int, ids: list[int], mask: list[int]) -> str:
    import json

    return json.dumps({"index": index, "input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)],
                       "tokens": len(ids), "trained": sum(mask)})


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
            out.append(mark(text[len(done):], run[k][1]))
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
