"""`export.py format=gguf`: merged/ -> <run>/gguf/<run>.<type>.gguf (+ Modelfile.<type>, card, licences), each
file verified in llama.cpp against merged/ before it is kept.

Every requested type is written as `<file>.partial` and checked; only when all pass are they renamed into
place, so a failed export leaves nothing of this call behind (files of earlier exports stay, listed in
gguf/verification.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from finetune.runs import rundir
from finetune.runtime import console
from finetune.ship import gguf, llamacpp, modelfile, verify

LICENCE_FILES = ("LICENSE-LLAMA2", "NOTICE", "USE_POLICY.md")


def types_of(value) -> list[str]:
    """`gguf.type=q4_0` or `gguf.type=[f16,q8_0]` as a list."""
    return [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]


def problems(value) -> list[str]:
    """Every type must be one we write and verify, and at least one is asked for (checked before anything is
    written: an export of no type would leave a gguf/ folder without a model)."""
    types = types_of(value)
    if not types:
        return [
            f"gguf.type=[]: give at least one type, e.g. gguf.type=q8_0 or gguf.type=[f16,q4_k_m] (one of "
            f"{', '.join(gguf.TYPES)})"
        ]
    wrong = [str(t) for t in types if t not in gguf.TYPES]
    return (
        [
            f"gguf.type={','.join(wrong)}: use one or more of {', '.join(gguf.TYPES)} (the IQ, TQ and MXFP4 "
            "types are not offered: see the README)"
        ]
        if wrong
        else []
    )


def write_one(merged: Path, partial: Path, gtype: str, name: str, merged_dtype: str) -> dict:
    """One GGUF of `gtype` at `partial`: by the gguf package, or (K-quants) through llama.cpp's quantizer."""
    if gtype in gguf.PY_TYPES:
        return gguf.write(merged, partial, gtype, name)
    lossless = partial.with_name(partial.name + ".source")
    try:
        stats = gguf.write(merged, lossless, gguf.lossless_source_type(merged_dtype), name)
        note = gguf.k_quantize(lossless, partial, gtype)
    finally:
        lossless.unlink(missing_ok=True)
    return {
        **stats,
        "bytes": partial.stat().st_size,
        "types": f"llama.cpp {gtype} from {stats['types']}",
        **({"note": note} if note else {}),
    }


def export(run: Path, train_cfg, sp, merged: Path, gcfg, vcfg) -> tuple[Path, list]:
    """Write, verify and keep every type in `gcfg.type`; returns (gguf folder, [GGUFCheck])."""
    out = run / "gguf"
    adapter_sha = rundir.adapter_hash(run)
    if out.is_dir() and rundir.recorded_hash(out) != adapter_sha:  # files made from another adapter go
        shutil.rmtree(out)
    out.mkdir(exist_ok=True)
    for stale in out.glob("*.gguf.partial"):  # an export killed mid-write; this one holds the run's derived lock
        stale.unlink()
    name = run.name
    merged_dtype = json.loads((merged / "config.json").read_text()).get("dtype", "float32")
    found = verify.run_examples(run, train_cfg)  # <run>/inputs.json: the raw data is not read again
    prompts, source = verify.sample_prompts(found, sp, vcfg.prompts, vcfg.max_prompt_tokens)
    seqs, seq_source = verify.heldout_sequences(found, train_cfg, sp, gcfg.sequences, gcfg.max_tokens)
    console.info(f"gguf: reference run of merged/ on {len(prompts)} prompts and {len(seqs)} held-out sequences")
    reference = llamacpp.merged_outputs(merged, prompts, seqs, vcfg.max_new_tokens)
    done, partials = [], []
    try:
        for gtype in types_of(gcfg.type):
            final = out / f"{name}.{gtype}.gguf"
            partial = final.with_name(final.name + ".partial")
            partials.append(partial)
            stats = write_one(merged, partial, gtype, name, merged_dtype)
            chk = llamacpp.check(
                partial, gtype, gguf.bits(gtype), reference, prompts, seqs, sp, vcfg.max_new_tokens, gcfg.tolerance
            )
            console.info(
                f"gguf: {final.name} {stats['bytes'] / 1e6:.1f} MB, {chk.summary()}"
                + (f"\ngguf: {final.name}: {stats['note']}" if stats.get("note") else "")
            )
            if not chk.ok:
                fix = (
                    "The chat template in the GGUF does not give the trained ids"
                    if not chk.template_ids_exact
                    else f"If this drift is acceptable for {gtype}, pass gguf.tolerance="
                    f"{chk.value * 1.5 if chk.gate == 'perplexity' else chk.value * 2:.3g}"
                )
                raise gguf.GGUFError(
                    f"{gtype} GGUF failed verification in llama.cpp against merged/ on "
                    f"{len(prompts)} prompts from {source} and {chk.scored_tokens} tokens of "
                    f"{seq_source}: {chk.summary()}. Nothing was written to {out}. {fix}"
                )
            done.append((final, partial, chk, stats))
    except BaseException:
        for p in partials:
            p.unlink(missing_ok=True)
        raise
    context = json.loads((merged / "config.json").read_text())["max_position_embeddings"]  # as trained (scaled)
    for final, partial, _, _ in done:
        partial.replace(final)
        modelfile.write(out, final.name, train_cfg.data.system_prompt, merged / "LICENSE-LLAMA2", context)
    for lic in LICENCE_FILES:
        if (merged / lic).is_file():
            shutil.copy2(merged / lic, out / lic)
    record_checks(out, [(final, chk, stats, source, seq_source) for final, _, chk, stats in done], adapter_sha)
    return out, [chk for _, _, chk, _ in done]


def record_checks(out: Path, new: list, adapter_sha: str) -> dict:
    """gguf/verification.json: the adapter's hash, one entry per GGUF file present (this export's replace
    earlier ones, made from the same adapter)."""
    path = out / "verification.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    files = {k: v for k, v in old.get("files", {}).items() if (out / k).is_file()}
    for final, chk, stats, source, seq_source in new:
        files[final.name] = {
            **chk.record(),
            "bytes": stats["bytes"],
            "tensor_types": stats["types"],
            "prompt_source": source,
            "perplexity_source": seq_source,
        }
    data = {"adapter_sha256": adapter_sha, "files": dict(sorted(files.items()))}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return data


def card_section(out: Path) -> str:
    """The GGUF card's account of each file: type, size, how far it drifts from merged/ in llama.cpp."""
    files = json.loads((out / "verification.json").read_text())["files"]
    rows = [
        f"| `{f}` | {c['type']} | {c['bytes'] / 1e6:,.1f} MB | {c['relative']:.2e} | {c['ppl_ratio']:.4f} | "
        f"{c['gate']} <= {c['tolerance']:g} | {c['same_generations']}/{c['prompts']} | "
        f"{'exact' if c['template_ids_exact'] else 'differ'} |"
        for f, c in files.items()
    ]
    return (
        "\n## GGUF files\n\nWritten from the merged weights with the `gguf` package; K-quants by llama.cpp's "
        "own quantizer. Each file was loaded in llama.cpp (llama-cpp-python) and compared with the merged "
        "model (transformers, float32) on held-out prompts from the run's data:\n\n"
        "| file | type | size | relative max \\|Δlogits\\| | perplexity ratio | gate | identical greedy "
        "generations | template ids |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
