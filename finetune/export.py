"""Export a run: `python finetune/export.py run=outputs/<run> [merge=true] [dtype=bfloat16] [merge_base=original]`,
`... format=gguf [gguf.type=q4_k_m]` for llama.cpp and Ollama.

Always: <run>/adapter/README.md, a model card from the run's config and metrics. With merge=true: <run>/merged/
(config, sharded safetensors + index, tokenizer, licence files, card), merged shard by shard in bounded memory
(finetune/ship/merge.py), then checked against the adapter model on prompts from the run's data; above the
tolerance the export fails with the numbers and no merged/ is left behind. format=gguf: <run>/gguf/ from merged/
(finetune/ship/gguf_export.py), each file checked in llama.cpp against merged/.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import the package, never sibling files as top-level modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from finetune import config
from finetune.runtime import console, files


@dataclass
class VerifyConfig:
    prompts: int = 4
    max_prompt_tokens: int = 256
    max_new_tokens: int = 16
    tolerance: float | None = None


@dataclass
class GGUFConfig:
    type: Any = "q8_0"  # one type or a list: [f16,q8_0,q4_k_m]
    tolerance: float | None = None  # null: per type (finetune/ship/llamacpp.py)
    sequences: int = 8  # held-out conversations for the perplexity of types below 8 bits
    max_tokens: int = 256


@dataclass
class ExportConfig:
    run: str = MISSING
    format: str = "safetensors"  # safetensors | gguf (implies merged/: reused if newer than the adapter)
    merge: bool = False
    merge_base: str = "auto"
    dtype: str | None = None
    max_shard_size: str = "2GB"
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    gguf: GGUFConfig = field(default_factory=GGUFConfig)


config.register()
ConfigStore.instance().store(name="export_schema", node=ExportConfig)


def check(cfg: ExportConfig, run: Path) -> list[str]:
    from finetune.runs import rundir

    problems = []
    if outside := rundir.inside_run(run):
        problems.append(outside)
    elif not (run / "adapter" / "adapter_config.json").is_file():
        problems.append(
            f"run={cfg.run}: no adapter/adapter_config.json there; point run= at a finished training "
            "run (outputs/<run>), or finish it (training writes adapter/ at the end)"
        )
    else:
        from finetune.runs import damage

        problems += damage.adapter_problems(run)
    if cfg.merge_base not in ("auto", "dequantized", "original"):
        problems.append(f"merge_base={cfg.merge_base}: use auto, dequantized or original")
    if cfg.dtype is not None and cfg.dtype not in config.DTYPES:
        problems.append(f"dtype={cfg.dtype}: use one of {', '.join(config.DTYPES)} (or leave it out)")
    if cfg.verify.prompts < 1:
        problems.append("verify.prompts must be >= 1: every merge is verified")
    if cfg.format not in ("safetensors", "gguf"):
        problems.append(f"format={cfg.format}: use safetensors (adapter/, merged/ with merge=true) or gguf")
    if cfg.format == "gguf":
        from finetune.ship import gguf_export

        problems += gguf_export.problems(cfg.gguf.type)
    writes = (["merged", "merged.partial", "merged.old"] if cfg.merge or cfg.format == "gguf" else []) + (
        ["gguf"] if cfg.format == "gguf" else []
    )
    for name in (n for n in writes if (run / n).exists() and not (run / n).is_dir()):
        problems.append(f"run={cfg.run}: {run / name} is a file where export writes the folder {name}/; move it away")
    return problems


def base_dir(run: Path, train_cfg, tokenizer) -> Path:
    """The base checkpoint folder the adapter was trained on: local, re-created (random init) or downloaded.
    Where training resolved it: <run>/inputs.json, else (older runs) the adapter's base_model_name_or_path."""
    import dataclasses

    from finetune.model import base as model
    from finetune.runs import inputs
    from finetune.ship.merge import MergeError

    if (record := inputs.read(run)) is not None:
        where, revision = record.base_path, record.base_revision
    else:
        adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
        where, revision = adapter_config.get("base_model_name_or_path"), train_cfg.model.revision
    mcfg = dataclasses.replace(train_cfg.model, path=where or train_cfg.model.path, revision=revision)
    if mcfg.random_init:
        return Path(model.resolved_path(mcfg, tokenizer))  # seeded: the same weights as at training time
    if config.looks_local(mcfg.path):
        if not Path(mcfg.path).is_dir():
            named_in = inputs.FILE if record else "adapter_config.json"
            raise MergeError(
                f"the base model folder {mcfg.path} (the run's {named_in}) is gone; put the base "
                "checkpoint back there to merge"
            )
        return Path(mcfg.path)
    from huggingface_hub import snapshot_download  # the weights are read shard by shard from the local cache

    return Path(
        snapshot_download(
            mcfg.path, revision=mcfg.revision, allow_patterns=["*.json", "*.safetensors", "tokenizer.model"]
        )
    )


def merge_and_verify(cfg: ExportConfig, train_cfg, run: Path, serve: str = ""):
    """Write <run>/merged.partial, verify it, rename it to <run>/merged; (folder, [checked drift, reported ...])."""
    import torch

    from finetune.model import base as model
    from finetune.model import rope
    from finetune.runs import card as modelcard
    from finetune.runs import rundir
    from finetune.ship import merge, verify
    from finetune.ship.loading import load_tokenizer

    adapter_dir = run / "adapter"
    adapter_sha = rundir.adapter_hash(run)  # before reading it: merged/ records the adapter it came from
    tokenizer = load_tokenizer(run, train_cfg)  # the tokenizer as trained (adapter/), with its licence files
    base = base_dir(run, train_cfg, tokenizer)
    four_bit = train_cfg.quant.mode in ("nf4", "fp4")
    merge_base = cfg.merge_base if cfg.merge_base != "auto" else ("dequantized" if four_bit else "original")
    if merge_base == "dequantized" and not four_bit:
        raise merge.MergeError(
            f"merge_base=dequantized reproduces a 4-bit (QLoRA) base, but this run used "
            f"quant.mode={train_cfg.quant.mode}; use merge_base=original"
        )
    quant = (
        merge.Quant(train_cfg.quant.mode, train_cfg.quant.double_quant, model.compute_dtype(train_cfg.model))
        if merge_base == "dequantized"
        else None
    )
    out_dtype = getattr(torch, cfg.dtype) if cfg.dtype else None
    partial, final = run / "merged.partial", run / "merged"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(run / "merged.old", ignore_errors=True)  # an earlier export stopped between its two renames
    rope_fields = rope.config_fields(train_cfg.model, rope.theta_of(json.loads((base / "config.json").read_text())))
    stats = merge.merge(
        base,
        merge.read_adapter(adapter_dir),
        partial,
        quant,
        out_dtype,
        config.parse_size(cfg.max_shard_size, "max_shard_size", "", "it like 2GB, 500MB or 1.5GiB"),
        config_fields=rope_fields,
    )  # the RoPE scaling the run trained with
    tokenizer.save(partial)
    console.info(
        f"merged {stats.merged} LoRA weights into {merge_base} base weights "
        f"({stats.dequantized} quantize-dequantized), {stats.shards} shards, {stats.total_bytes / 1e9:.2f} GB"
        + (f"; {stats.replaced} fully trained tensors (embeddings, norms) copied" if stats.replaced else "")
    )

    # Verify: the adapter model on the base it was trained on (and, for original, on that base too)
    stored = out_dtype or getattr(torch, json.loads((partial / "config.json").read_text()).get("dtype", "float32"))
    tolerance = cfg.verify.tolerance or verify.default_tolerance(stored, model.compute_dtype(train_cfg.model))
    prompts, source = verify.sample_prompts(
        verify.run_examples(run, train_cfg), tokenizer.sp, cfg.verify.prompts, cfg.verify.max_prompt_tokens
    )
    merged_out = verify.merged_outputs(partial, prompts, cfg.verify.max_new_tokens)
    refs = [("the adapter model as trained", four_bit)]
    if merge_base == "original" and train_cfg.quant.mode != "none":  # check the arithmetic, report the drift
        refs.insert(0, ("the adapter on the original 16-bit base", False))
    drifts = [
        verify.compare(
            name,
            verify.adapter_outputs(train_cfg, base, adapter_dir, q, prompts, cfg.verify.max_new_tokens),
            merged_out,
            tolerance,
            tokenizer.sp.decode,
            prompts,
        )
        for name, q in refs
    ]
    if not drifts[0].ok:
        shutil.rmtree(partial)
        raise merge.MergeError(
            f"merged model failed verification on {len(prompts)} prompts from {source}: "
            f"{drifts[0].summary()}. Nothing was written to {final}. If this drift is acceptable for "
            f"{stored} weights, pass verify.tolerance={drifts[0].relative * 2:.0e}"
        )
    (partial / "verification.json").write_text(
        json.dumps(
            {
                "adapter_sha256": adapter_sha,
                "merge_base": merge_base,
                "dtype": str(stored).removeprefix("torch."),
                "prompt_source": source,
                "checks": [dataclasses.asdict(d) for d in drifts],
            },
            indent=2,
        )
    )
    modelcard.write(partial, run, "merged", merge_section(merge_base, stored, stats, source, drifts) + serve)
    files.replace(partial, final)
    return final, drifts


def merge_section(merge_base: str, dtype, stats, source: str, drifts) -> str:
    """The model card's account of how the weights were merged and how far they drift."""
    into = (
        "the NF4 quantize-then-dequantize of the base weights (what QLoRA trained against)"
        if merge_base == "dequantized"
        else "the original base weights"
    )
    lines = [
        f"\n## Merge\n\nThe LoRA adapter was merged into {into} (`merge_base={merge_base}`), stored as "
        f"{str(dtype).removeprefix('torch.')} in {stats.shards} safetensors shards.\n",
        f"Verified on {drifts[0].prompts} prompts from {source}:\n",
        "| compared with | max \\|Δlogits\\| | relative to max \\|logits\\| | tolerance | identical greedy "
        "generations |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in drifts:
        checked = f"{d.tolerance:.0e}" if d is drifts[0] else "none (reported only)"
        lines.append(
            f"| {d.reference} | {d.max_abs:.2e} | {d.relative:.2e} | {checked} | {d.same_generations}/{d.prompts} |"
        )
    return "\n".join(lines) + "\n"


@console.hydra_errors
@hydra.main(version_base="1.3", config_path=str(config.CONFIGS_DIR), config_name="export")
@console.exit_cleanly
def main(dict_cfg: DictConfig) -> None:
    cfg: ExportConfig = config.schema_object(dict_cfg, lambda c: check(c, Path(c.run).expanduser().resolve()))
    run = Path(cfg.run).expanduser().resolve()
    from finetune.runs import card as modelcard
    from finetune.runs import lock
    from finetune.runs.rundir import run_config

    train_cfg = run_config(run)
    if cfg.format == "gguf":  # a RoPE scaling llama.cpp cannot run: refused before anything is written
        from finetune.model import rope
        from finetune.ship import gguf_rope

        if found := gguf_rope.problems(rope.scaling_of(rope.config_fields(train_cfg.model))):
            raise config.ConfigError(found)
    lock.share(run, "export.py")  # a training job does not replace the adapter while it is read
    if cfg.merge or cfg.format == "gguf":  # alone: a second export would write into this one's merged.partial
        lock.derived(run, "export.py", write=True)

    from finetune.ship import serving

    # The adapter folder, safetensors only, with a card built from the run's config and metrics
    adapter_dir = run / "adapter"
    if (pickle := adapter_dir / "training_args.bin").is_file():  # written by older runs: a pickle, not needed
        pickle.unlink()
        console.info(f"removed {pickle} (a pickle of TrainingArguments; adapter/ ships safetensors only)")
    serve = serving.section(modelcard.base_of(train_cfg, adapter_dir).hub_id or "<base model>", run.name, adapter_dir)
    modelcard.write(adapter_dir, run, "adapter", serve)
    console.info(f"adapter: {adapter_dir} ({', '.join(sorted(p.name for p in adapter_dir.iterdir()))})")
    for warning in serving.adapter_warnings(adapter_dir):
        console.info(f"warning: vLLM: {warning}")
    try:
        derive(cfg, train_cfg, run, serve)
    except BaseException as exc:
        shutil.rmtree(run / "merged.partial", ignore_errors=True)  # never read; on a full disk its space is needed
        if isinstance(exc, Exception) and (full := files.disk_full(exc)):
            from finetune.ship.merge import MergeError

            raise MergeError(
                f"{getattr(full, 'filename', None) or run}: no space left on the disk; what this export was "
                "writing is removed (merged.partial, *.gguf.partial) and every finished folder is kept: free "
                "space, then run the same command again"
            ) from None
        raise


def derive(cfg: ExportConfig, train_cfg, run: Path, serve: str) -> None:
    """merged/ (merge=true, or format=gguf without a merged/ of this adapter), then gguf/ (format=gguf)."""
    from finetune.runs import rundir

    merged = run / "merged"
    reuse = (
        cfg.format == "gguf"
        and not cfg.merge
        and (merged / "config.json").is_file()
        and rundir.derived_problem(run, "merged") is None
    )  # merged/ from this very adapter
    if cfg.merge or (cfg.format == "gguf" and not reuse):
        # Merge shard by shard, verify against the adapter model, then publish the folder as merged/
        out, drifts = merge_and_verify(cfg, train_cfg, run, serve)
        console.info(
            f"merged: {out}\nverified {drifts[0].summary()}"
            + "".join(f"\nreported {d.summary(checked=False)}" for d in drifts[1:])
        )
    if cfg.format == "gguf":
        export_gguf(cfg, train_cfg, run)


def export_gguf(cfg: ExportConfig, train_cfg, run: Path) -> None:
    """GGUF files from merged/, each verified in llama.cpp; Modelfiles, card and licences beside them."""
    import sentencepiece as spm

    from finetune.runs import card as modelcard
    from finetune.ship import gguf_export

    sp = spm.SentencePieceProcessor(model_file=str(run / "merged" / "tokenizer.model"))
    out, done = gguf_export.export(run, train_cfg, sp, run / "merged", cfg.gguf, cfg.verify)
    modelcard.write(out, run, "gguf", gguf_export.card_section(out))
    console.info(f"gguf: {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")


if __name__ == "__main__":
    main()
