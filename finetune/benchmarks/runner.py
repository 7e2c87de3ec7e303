"""lm_eval's `simple_evaluate` on a model already in memory (the 4-bit base + adapter exactly as trained, merged
weights, or the model being trained), through its HFLM wrapper: the scores are lm_eval's own computation.

Prompts: with `chat` on, lm_eval renders each prompt through the tokenizer's chat template (the Llama 2 format
the run trained on) and tokenizes the text; `chat_ids_match` checks that this gives `chat_format.encode_prompt`'s
ids, the ids training used.
"""

from __future__ import annotations

from finetune.benchmarks import tasks as task_lib
from finetune.benchmarks.options import BenchmarksConfig
from finetune.data import chat_format


def hflm(model, tokenizer, batch_size: int, max_length: int | None = None):
    """lm_eval's HFLM around an in-memory model (PeftModel or PreTrainedModel) and our Hugging Face tokenizer."""
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer.hf, batch_size=batch_size, max_length=max_length)


def chat_ids_match(lm, sp, text: str) -> bool:
    """lm_eval's chat path (apply_chat_template, then its own tokenization) gives encode_prompt's ids for a
    one-turn prompt `text`."""
    messages = [{"role": "user", "content": text}]
    return lm.tok_encode(lm.apply_chat_template(messages)) == chat_format.encode_prompt(sp, messages)


def first_prompt(built: task_lib.Built) -> str | None:
    """The first document's prompt text of the first task (what the chat check uses)."""
    for task in built.tasks:
        docs = task.eval_docs
        if len(docs):
            text = task.doc_to_text(docs[0])
            return text if isinstance(text, str) else None
    return None


def dataset_of(cfg: dict) -> dict:
    """The Hub dataset a task scores (its `metadata.hub_dataset`, else its `dataset_path`) and the split."""
    meta = cfg.get("metadata") or {}
    path = meta.get("hub_dataset") or (cfg.get("dataset_path") if cfg.get("dataset_path") != "json" else None)
    return {
        "hub_id": path,
        "name": cfg.get("dataset_name"),
        "split": cfg.get("test_split") or cfg.get("validation_split"),
    }


def evaluate(
    model, tokenizer, bcfg: BenchmarksConfig, chat: bool, batch_size: int, max_length: int | None = None
) -> dict:
    """lm_eval's results for `bcfg.tasks` on an in-memory `model` (see evaluate_lm)."""
    return evaluate_lm(hflm(model, tokenizer, batch_size, max_length), tokenizer, bcfg, chat)


def evaluate_lm(lm, tokenizer, bcfg: BenchmarksConfig, chat: bool) -> dict:
    """lm_eval's results for `bcfg.tasks` on an lm_eval model: {"results", "n-samples", "versions",
    "higher_is_better", "datasets", "chat_ids_match"} (the parts of simple_evaluate's output we keep)."""
    from lm_eval import simple_evaluate

    built = task_lib.build(bcfg.tasks, bcfg.include)
    text = first_prompt(built) if chat else None
    gen = {"max_gen_toks": bcfg.max_gen_toks} if bcfg.max_gen_toks else None
    out = simple_evaluate(
        model=lm,
        tasks=built.tasks,
        task_manager=built.manager,
        limit=bcfg.limit,
        num_fewshot=bcfg.num_fewshot,
        apply_chat_template=chat,
        gen_kwargs=gen,
        log_samples=False,
    )  # lm_eval's default seeds: its few-shot choices are reproducible
    keep = {k: out.get(k) for k in ("results", "n-samples", "versions", "higher_is_better")}
    keep["datasets"] = {name: dataset_of(cfg) for name, cfg in (out.get("configs") or {}).items()}
    keep["chat_ids_match"] = chat_ids_match(lm, tokenizer.sp, text) if text is not None else None
    return keep
