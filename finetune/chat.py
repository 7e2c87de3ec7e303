"""Talk to a trained run: `python finetune/chat.py run=outputs/<run>` (interactive, streaming), or batch with
`prompts=my_prompts.jsonl out=answers.jsonl`.

The model is the run's base (rebuilt from its config.yaml, 4-bit where the run was QLoRA) plus its adapter, or
its merged/ weights. Prompts are token ids from `chat_format.encode_prompt`, the function family that encoded the
training data, with the run's own tokenizer (adapter/), so training and inference cannot drift.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from finetune import config
from finetune.config import ConfigError, QuantConfig
from finetune.runtime import console


@dataclass
class GenerateConfig:
    max_new_tokens: int = 256
    do_sample: bool = False  # greedy: the same answer every time
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0


@dataclass
class ChatConfig:
    run: str = MISSING
    merged: bool = False
    quant: QuantConfig | None = None  # the `quant=` group; None: as trained
    system: str | None = None
    prompts: str | None = None
    out: str | None = None
    batch_size: int = 8
    generate: GenerateConfig = field(default_factory=GenerateConfig)


config.register()
ConfigStore.instance().store(name="chat_schema", node=ChatConfig)


# ------------------------------------------------------------------------------------------ talking
def generation(gcfg: GenerateConfig, pad_id: int):
    from transformers import GenerationConfig, set_seed

    from finetune.model.generate import greedy

    if not gcfg.do_sample:
        return greedy(gcfg.max_new_tokens, pad_id)
    set_seed(gcfg.seed)
    base = greedy(gcfg.max_new_tokens, pad_id).to_dict()
    return GenerationConfig(
        **{
            **base,
            "do_sample": True,
            "temperature": gcfg.temperature,
            "top_p": gcfg.top_p,
            "repetition_penalty": gcfg.repetition_penalty,
        }
    )


def batch(model, tokenizer, prompts, gen, batch_size: int, out: Path) -> None:
    """One JSON line per prompt: messages, answer, prompt_ids (what the model saw), new_tokens, stop reason."""
    from finetune.model.generate import generate

    out.parent.mkdir(parents=True, exist_ok=True)
    console.info(
        f"answering {len(prompts)} prompts, {batch_size} at a time, up to {gen.max_new_tokens} new tokens each"
    )
    with out.open("w") as fh:
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            for p, new in zip(chunk, generate(model, [p.ids for p in chunk], gen)):
                stop = "eos" if len(new) < gen.max_new_tokens else "length"
                fh.write(
                    json.dumps(
                        {
                            "messages": p.messages,
                            "answer": tokenizer.sp.decode(new),
                            "prompt_ids": p.ids,
                            "new_tokens": len(new),
                            "stop": stop,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
            console.info(f"{min(i + batch_size, len(prompts))}/{len(prompts)} answered")
    console.info(f"answers: {out}")


def dialog_ids(sp, system: str | None, history: list[dict], budget: int) -> tuple[list[int], list[dict]]:
    """Prompt ids of the system prompt + history (ending with a user turn), and the history kept: the oldest
    exchanges go first while the prompt is longer than `budget` tokens."""
    from finetune.data import chat_format

    while True:
        ids = chat_format.encode_prompt(sp, ([{"role": "system", "content": system}] if system else []) + history)
        if len(ids) <= budget or len(history) == 1:
            return ids, history
        history = history[2:]


def interactive(model, tokenizer, gen, system: str | None) -> None:
    """A multi-turn chat on stdin/stdout; the answer streams as it is generated and ends at EOS."""
    from transformers import TextStreamer

    from finetune.model.generate import generate

    history: list[dict] = []
    context = model.config.max_position_embeddings
    print(
        "/reset clears the history, /system <text> sets the system prompt, /quit or Ctrl-D ends "
        "(Ctrl-C stops an answer)",
        flush=True,
    )
    while True:
        try:
            line = input("\nuser> ").strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: end the line before the shell's
            print(flush=True)
            break
        if line in ("/quit", "/exit"):
            break
        if line.startswith("/system"):
            system = line[len("/system") :].strip() or None
        if line == "/reset" or line.startswith("/system"):
            history.clear()
            said = f"system prompt: {system!r}" if system else "no system prompt"
            print("(history cleared)" + (f" {said}" if line.startswith("/system") else ""), flush=True)
            continue
        if line.startswith("/"):  # /help, or a mistyped command: the commands again, never a prompt for the model
            print("commands: /reset, /system <text>, /quit (or Ctrl-D)", flush=True)
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        ids, kept = dialog_ids(tokenizer.sp, system, history, context - gen.max_new_tokens)
        if len(kept) < len(history):
            print(f"({(len(history) - len(kept)) // 2} oldest exchange(s) dropped to fit the context)", flush=True)
            history = kept
        print("assistant> ", end="", flush=True)
        streamer = TextStreamer(tokenizer.hf, skip_prompt=True, skip_special_tokens=True)
        try:
            new = generate(model, [ids], gen, streamer=streamer)[0]
        except KeyboardInterrupt:  # Ctrl-C during an answer: that exchange is dropped, the chat goes on
            history.pop()
            print("\n(answer stopped; not kept in the history)", flush=True)
            continue
        history.append({"role": "assistant", "content": tokenizer.sp.decode(new)})


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="chat")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    # Check the run and the prompts before any weights load
    from finetune.runs import lock, rundir

    if OmegaConf.is_missing(dict_cfg, "run"):
        raise ConfigError(["run: required; give a training run directory: run=outputs/<run>"])
    ccfg: ChatConfig = config.schema_object(dict_cfg)
    run = Path(ccfg.run).expanduser().resolve()
    problems = rundir.run_problems(run, ccfg.merged)
    if ccfg.prompts and not Path(ccfg.prompts).is_file():
        problems.append(f"prompts={ccfg.prompts}: no such file; give a JSONL of prompts")
    if problems:
        raise ConfigError(problems)
    lock.share(run, "chat.py")  # a training job does not replace the adapter while it is read
    from finetune.data.prompts import read_prompts
    from finetune.ship.loading import add_adapter, load_base, load_tokenizer, quant_config

    train_cfg = rundir.run_config(run)
    tokenizer = load_tokenizer(run, train_cfg)
    system = ccfg.system if ccfg.system is not None else train_cfg.data.system_prompt
    prompts = read_prompts(ccfg.prompts, tokenizer.sp, system) if ccfg.prompts else None

    # Load the model: base (+ adapter) or merged weights
    model = load_base(run, train_cfg, tokenizer, ccfg.quant, ccfg.merged)
    if not ccfg.merged:
        model = add_adapter(model, run)
    gen = generation(ccfg.generate, tokenizer.pad_id)
    what = "merged weights" if ccfg.merged else "base + adapter"
    console.info(
        f"model: {run.name} ({what}, quant={quant_config(ccfg.quant, train_cfg, ccfg.merged).mode}, {model.device})"
    )

    # Talk
    if prompts is not None:
        batch(model, tokenizer, prompts, gen, ccfg.batch_size, Path(ccfg.out) if ccfg.out else run / "answers.jsonl")
    else:
        interactive(model, tokenizer, gen, system)


if __name__ == "__main__":
    main()
