"""`evaluate.py run=<run> long_context.length=N`: does the model read N tokens? Two checks, built here.

Perplexity over windows of N tokens of one long document, reported over the whole window and over the
positions past the model's original (pretrained) context. No public-domain book ships with the toolkit, so the
document is the bundled OpenAssistant conversations (data/sft/oasst-en100, Apache-2.0): every message of every
tree, depth first, written one after another as plain text. Its topics change every few hundred tokens, so it
measures whether late positions still work (a broken RoPE scaling explodes there), not long-range recall.

Passkey retrieval (Mohtashami & Jaggi 2023): a random 5-digit key stated once at a depth inside filler text of
N tokens, then asked for. Scored teacher-forced: the key's log-probability, and whether every key token is the
model's argmax (what greedy decoding would answer). One forward pass per trial.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from finetune.config import ROOT, ConfigError, rope
from finetune.data.chat_format import BOS_ID

DOCUMENT = ROOT / "data" / "sft" / "oasst-en100" / "en_100_tree.jsonl"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
TASK = (
    "There is an important piece of information hidden inside a lot of irrelevant text. Find it and "
    "memorize it; I will ask you about it.\n"
)
CHUNK = 1024  # positions projected through the LM head at a time (no N x 32000 logits at once)


@dataclass
class LongContextConfig:
    length: int | None = None  # tokens per window and per passkey prompt; null: no long-context eval
    windows: int = 2  # perplexity windows of `length` tokens taken from the long document
    passkeys: int = 4  # passkey trials, the key at depths evenly spread from the start to the end
    seed: int = 0  # the passkeys' digits


@dataclass
class LongResult:
    model: str
    perplexity: float  # over every position of every window
    perplexity_past_original: float | None  # over the positions past the original context (None: none there)
    passkey_exact: int  # trials whose every key token is the argmax
    passkey_logprob: float  # mean log-probability of the whole key
    last_position: int  # the last position scored (length - 1)


def problems(lcfg: LongContextConfig) -> list[str]:
    if lcfg.length is not None and lcfg.length < 64:
        return [f"long_context.length={lcfg.length}: must be >= 64 tokens (the passkey prompt needs room)"]
    if lcfg.windows < 1 or lcfg.passkeys < 0:
        return ["long_context.windows must be >= 1 and long_context.passkeys >= 0"]
    return []


def document_ids(sp) -> list[int]:
    """The long document's token ids: every OpenAssistant message, depth first, as `User:`/`Assistant:` text."""
    parts: list[str] = []

    def walk(node: dict) -> None:
        parts.append(f"{'User' if node['role'] == 'prompter' else 'Assistant'}: {node['text'].strip()}")
        for reply in node.get("replies", []):
            walk(reply)

    for line in DOCUMENT.read_text().splitlines():
        if line.strip():
            walk(json.loads(line)["prompt"])
    return sp.encode("\n\n".join(parts))


def windows(sp, length: int, count: int) -> list[list[int]]:
    """`count` windows of `length` tokens (BOS first), taken one after another from the document."""
    ids = document_ids(sp)
    if (length - 1) * count > len(ids):
        raise ConfigError(
            [
                f"long_context.length={length} x long_context.windows={count} needs "
                f"{(length - 1) * count:,} tokens; the bundled long document has {len(ids):,}: "
                "lower one of them"
            ]
        )
    return [[BOS_ID] + ids[i * (length - 1) : (i + 1) * (length - 1)] for i in range(count)]


def passkey_prompts(sp, length: int, trials: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(prompt + key ids, key ids) per trial: exactly `length` tokens, the key sentence at depth i / (trials-1)."""
    rng = random.Random(seed)
    task, question, filler = sp.encode(TASK), sp.encode("\nWhat is the pass key? The pass key is"), sp.encode(FILLER)
    out = []
    for i in range(trials):
        key = str(rng.randint(10000, 99999))
        needle = sp.encode(f" The pass key is {key}. Remember it. {key} is the pass key. ")
        answer = sp.encode(f" {key}")
        room = length - 1 - len(task) - len(needle) - len(question) - len(answer)
        if room < 0:
            raise ConfigError(
                [f"long_context.length={length}: too short for the passkey prompt; use >= {length - room}"]
            )
        hay = (filler * (room // len(filler) + 1))[:room]
        at = round(room * (i / max(trials - 1, 1)))
        out.append(([BOS_ID] + task + hay[:at] + needle + hay[at:] + question + answer, answer))
    return out


def token_logprobs(net, ids: list[int]):
    """log p(ids[t] | ids[:t]) for t = 1..n-1 and whether each is the argmax; the LM head runs CHUNK rows at a
    time."""
    import torch

    inner = net.get_base_model() if hasattr(net, "get_base_model") else net
    x = torch.tensor([ids], device=inner.device)
    with torch.no_grad():
        hidden = inner.model(input_ids=x).last_hidden_state[0, :-1]
        logp, top = [], []
        for i in range(0, hidden.shape[0], CHUNK):
            lp = torch.log_softmax(inner.lm_head(hidden[i : i + CHUNK]).float(), dim=-1)
            target = x[0, i + 1 : i + 1 + CHUNK]
            logp.append(lp.gather(1, target[:, None])[:, 0].cpu())
            top.append((lp.argmax(-1) == target).cpu())
    return torch.cat(logp), torch.cat(top)


def score(net, label: str, wins, keys, original: int) -> LongResult:
    """Perplexity over `wins` (all, and past `original`) and the passkey trials `keys`."""
    nll, count, late_nll, late = 0.0, 0, 0.0, 0
    for ids in wins:
        logp, _ = token_logprobs(net, ids)
        nll, count = nll - float(logp.sum()), count + len(logp)
        tail = logp[original:]  # row t predicts position t + 1: positions past the original context
        late_nll, late = late_nll - float(tail.sum()), late + len(tail)
    exact, key_lp = 0, 0.0
    for ids, answer in keys:
        logp, top = token_logprobs(net, ids)
        exact += int(top[-len(answer) :].all())
        key_lp += float(logp[-len(answer) :].sum())
    return LongResult(
        label,
        math.exp(nll / count),
        math.exp(late_nll / late) if late else None,
        exact,
        key_lp / max(len(keys), 1),
        len(wins[0]) - 1,
    )


def score_all(models, sp, lcfg: LongContextConfig, mcfg, out: Path) -> str:
    """Score each (label, make_model) of `models` in order (each model made only when its turn comes: an adapter
    wraps the base in place); write `out` (JSON) and return the table to print."""
    wins = windows(sp, lcfg.length, lcfg.windows)
    keys = passkey_prompts(sp, lcfg.length, lcfg.passkeys, lcfg.seed)
    original = rope.original_context(mcfg)
    results = [score(make(), label, wins, keys, original) for label, make in models]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "length": lcfg.length,
                "context": rope.describe(mcfg),
                "original_context": original,
                "document": str(DOCUMENT.relative_to(ROOT)),
                "windows": lcfg.windows,
                "passkeys": lcfg.passkeys,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    lines = [
        f"long context: {lcfg.length} tokens (model context {rope.describe(mcfg)}); perplexity over "
        f"{lcfg.windows} window{'s' * (lcfg.windows > 1)} of the bundled OpenAssistant text, "
        f"{lcfg.passkeys} passkeys",
        f"{'model':<40} {'perplexity':>11} {f'past {original}':>11} {'passkey':>9} {'key logp':>9}",
    ]
    for r in results:
        late = f"{r.perplexity_past_original:,.2f}" if r.perplexity_past_original is not None else "-"
        lines.append(
            f"{r.model:<40} {r.perplexity:>11,.2f} {late:>11} {f'{r.passkey_exact}/{lcfg.passkeys}':>9} "
            f"{r.passkey_logprob:>9.2f}"
        )
    return "\n".join(lines) + f"\nsaved: {out}"


def evaluate(
    lcfg: LongContextConfig, run: Path | None, train_cfg, tokenizer, quant, base: bool, out: str | None
) -> str:
    """evaluate.py's long-context mode: the base as trained (with the run's RoPE scaling, no adapter) when
    `base` or there is no run, then the run's adapter model; returns the printed table."""
    from finetune.ship import loading

    mcfg = train_cfg.model
    path = (
        Path(out)
        if out
        else (run / "eval" if run else Path("outputs", "eval"))
        / (f"{'' if run else mcfg.name + '-'}long_context-{lcfg.length}.json")
    )
    windows(tokenizer.sp, lcfg.length, lcfg.windows)  # a length the document cannot fill: refused before loading
    net = loading.load_base(run, train_cfg, tokenizer, quant)
    mode = loading.quant_config(quant, train_cfg, merged=False).mode
    models = [(f"base {mcfg.name} ({mode})", lambda: net)] if base or not run else []
    if run:
        models.append((f"{run.name} (adapter)", lambda: loading.add_adapter(net, run)))
    return score_all(models, tokenizer.sp, lcfg, mcfg, path)
