"""The checks that catch the silent Llama 2 fine-tuning failures, run on the tokenized data before training.

  pad != EOS         padding with EOS hides EOS from the labels: the model never learns to stop
  EOS in labels      every answer that was not cut at max_length ends with a trained EOS
  no double BOS      each turn starts with exactly one BOS id (the text "<s>" is not BOS)
  label mask         no example without a trained token
  prompt = prefix    the inference prompt (`chat_format.encode_prompt`) is exactly the tokens before each
                     trained answer, so the model is prompted as it was trained

`train.py` stops with the failures before any weight loads; `preview.py` prints the verdict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from finetune.data.chat_format import BOS_ID, EOS_ID, encode_dialog, encode_prompt
from finetune.data.stats import DataError


class PreflightError(DataError):
    """The data would train a broken model; the message lists every failed check and its fix."""


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)
    loud: str = ""  # a warning that also goes on the headline: it changes what the run learns

    @property
    def ok(self) -> bool:
        return not self.failures

    def report(self) -> str:
        lines = [f"preflight: {'PASS' if self.ok else 'FAIL'}" + (f" -- WARNING: {self.loud}" if self.loud else "")]
        lines += [f"  ok    {p}" for p in self.passed]
        lines += [f"  WARN  {w}" for w in self.warnings]
        lines += [f"  FAIL  {f}" for f in self.failures]
        return "\n".join(lines)


def run(tokenizer, dataset, stats, sample: list[dict], dcfg) -> Verdict:
    """Check the tokenizer, every row of `dataset` (SFT: input_ids + assistant_masks; DPO: the pair columns)
    and the prompt prefix of the conversations in `sample` (adapted examples, re-encoded as training and as
    inference would)."""
    verdict = Verdict()
    pad, eos = tokenizer.hf.pad_token_id, tokenizer.hf.eos_token_id
    _check(
        verdict,
        pad is not None and pad != eos,
        f"pad id {pad} != EOS id {eos}",
        f"the pad token is EOS (id {eos}) or unset: padding would mask EOS out of the labels and the model "
        "would never stop; use a distinct pad token (Llama 2: <unk>, id 0)",
    )
    if "llama_prompt_ids" in dataset.column_names:
        cut_warning(verdict, stats, dcfg)
        return _pairs(verdict, dataset, stats)
    double, empty, no_eos = _scan(dataset)
    _check(
        verdict,
        not double,
        "one BOS id at the start of every turn, never two",
        f"{len(double)} examples start without BOS or hold two BOS in a row (first: #{double[:1]}); "
        "encode with finetune.chat_format, which adds BOS as an id, never as the text '<s>'",
    )
    _check(
        verdict,
        not empty,
        "every example has trained tokens",
        f"{len(empty)} examples have an empty label mask (first: #{empty[:1]}): they train nothing",
    )
    rows = len(dataset)
    if rows and len(no_eos) == rows:
        verdict.failures.append(
            f"EOS is in no example's labels (all {rows} were cut at data.max_length="
            f"{dcfg.max_length}): the model would never learn to stop; raise data.max_length or "
            "set data.too_long=drop"
        )
    elif stats.chunked == 0 and len(no_eos) > stats.cut:
        verdict.failures.append(
            f"{len(no_eos) - stats.cut} examples lack a trained EOS although they were not cut "
            f"(first: #{no_eos[:1]}); every answer must end with the EOS id, trained"
        )
    else:
        verdict.passed.append("EOS is trained at the end of every answer that fits in data.max_length")
    cut_warning(verdict, stats, dcfg)
    convs = [ex["messages"] for ex in sample if "messages" in ex]  # raw text has no prompt to check
    bad = [b for b in (_prefix_problem(tokenizer.sp, conv, dcfg.train_on) for conv in convs) if b]
    _check(
        verdict,
        not bad,
        f"the inference prompt is the training prefix of every answer ({len(convs)} conversations)",
        f"inference prompt != training prefix in {len(bad)} of {len(convs)} conversations: {bad[:1]}",
    )
    return verdict


CUT_LOUD = 0.05  # above this share of examples with a cut answer, the warning goes on the headline


def cut_warning(verdict: Verdict, stats, dcfg) -> None:
    """Answers cut at data.max_length lose their EOS: a warning, on the headline when more than a few percent."""
    if not stats.cut:
        return
    share = stats.cut / max(stats.examples, 1)
    verdict.warnings.append(
        f"{stats.cut} of {stats.examples} examples had their answer cut at data.max_length="
        f"{dcfg.max_length} and lose their EOS; raise data.max_length or set data.too_long=drop to "
        "train only whole answers"
    )
    if share > CUT_LOUD:
        verdict.loud = (
            f"{share:.0%} of the examples ({stats.cut} of {stats.examples}) have a cut answer: "
            f"the model learns answers that never end; raise data.max_length (now {dcfg.max_length}) "
            "or set data.too_long=drop"
        )


def require(tokenizer, prepared, dcfg) -> Verdict:
    """`run` on the prepared training data; raise PreflightError listing the failures, before any weight loads."""
    verdict = run(tokenizer, prepared.train, prepared.stats, prepared.sample, dcfg)
    if not verdict.ok:
        raise PreflightError("the data preflight failed, training would not work:\n" + verdict.report())
    return verdict


def _pairs(verdict: Verdict, dataset, stats) -> Verdict:
    """Preference pairs (or unpaired answers, KTO): each prompt starts with one BOS, and every answer that was not
    cut ends with EOS."""
    answers = [
        c for c in ("llama_chosen_ids", "llama_rejected_ids", "llama_completion_ids") if c in dataset.column_names
    ]
    bad_bos = no_eos = 0
    for batch in dataset.select_columns(["llama_prompt_ids", *answers]).iter(1024):
        for i, prompt in enumerate(batch["llama_prompt_ids"]):
            bad_bos += prompt[:1] != [BOS_ID] or prompt[:2] == [BOS_ID, BOS_ID]
            no_eos += sum(batch[c][i][-1:] != [EOS_ID] for c in answers)
    _check(
        verdict,
        not bad_bos,
        "every prompt starts with one BOS id",
        f"{bad_bos} prompts start without BOS or with two; encode with finetune.data.chat_format",
    )
    _check(
        verdict,
        no_eos <= len(answers) * stats.cut,
        "EOS ends every answer that fits in data.max_length",
        f"{no_eos} answers lack EOS although only {stats.cut} examples were cut; every answer must end with EOS",
    )
    return verdict


def _check(verdict: Verdict, ok: bool, passed: str, failed: str) -> None:
    (verdict.passed if ok else verdict.failures).append(passed if ok else failed)


def _scan(dataset) -> tuple[list[int], list[int], list[int]]:
    """Indices of rows with a BOS problem, with an empty mask, and without a trained EOS; one pass, in batches."""
    double, empty, no_eos, row = [], [], [], 0
    for batch in dataset.select_columns(["input_ids", "assistant_masks"]).iter(batch_size=1024):
        for ids, mask in zip(batch["input_ids"], batch["assistant_masks"]):
            ids, mask = np.asarray(ids), np.asarray(mask, dtype=bool)
            chunk = mask.all()  # a raw-text piece after the first: trained throughout, no BOS
            if (ids[0] != BOS_ID and not chunk) or ((ids[:-1] == BOS_ID) & (ids[1:] == BOS_ID)).any():
                double.append(row)
            if not mask.any():
                empty.append(row)
            if not ((ids == EOS_ID) & mask).any():
                no_eos.append(row)
            row += 1
    return double, empty, no_eos


def _prefix_problem(sp, messages: list[dict], train_on: str) -> str | None:
    """Where the prompt `chat.py` would send before a trained answer differs from the training tokens, if anywhere."""
    ids, mask = encode_dialog(sp, messages, train_on)
    starts = [i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1])]
    answers = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    trained = answers if train_on == "all" else answers[-1:]
    if len(starts) != len(trained):
        return f"{len(trained)} answers to train but {len(starts)} trained spans"
    for k, start in zip(trained, starts):
        prompt = encode_prompt(sp, messages[:k])
        if ids[: len(prompt)] != prompt:
            return f"answer {k}: the inference prompt's tokens differ from the training tokens"
        if len(prompt) != start:
            return f"answer {k}: the inference prompt has {len(prompt)} tokens, training trains from token {start}"
    return None
