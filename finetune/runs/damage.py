"""Files a run wrote that can no longer be used (cut short by a kill or a full disk, deleted, or replaced), found
before anything loads them: a damaged file otherwise ends in a traceback deep inside safetensors, peft or
sentencepiece, or is published as it is."""

from __future__ import annotations

from pathlib import Path

# What every later stage reads from adapter/: the weights, their peft config and the tokenizer as trained
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "tokenizer.model")


def unusable(path: Path) -> str | None:
    """Why a file cannot be used, or None: safetensors that do not read or hold NaN/inf (trained LoRA weights are
    finite), torch's zip files whose CRCs fail, JSON that does not parse, a SentencePiece model that does not load."""
    import json
    import zipfile

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                bad = [k for k in f.keys() if not torch.isfinite(f.get_tensor(k)).all()]
            return f"holds NaN or infinite values ({len(bad)} tensors, first {bad[0]})" if bad else None
        if path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as z:
                damaged = z.testzip()
            return f"is damaged (its part {damaged} fails its checksum)" if damaged else None
        if path.suffix == ".json":
            json.loads(path.read_text())
        if path.suffix == ".model":
            import sentencepiece as spm

            spm.SentencePieceProcessor(model_file=str(path))
    except Exception as exc:  # each reader raises its own types for a cut or foreign file
        return f"cannot be read ({type(exc).__name__}: {str(exc)[:200]})"
    return None


def adapter_problems(run: Path) -> list[str]:
    """Why <run>/adapter (a finished run's) cannot be loaded, exported or published: a file of it missing or
    unusable, named with the fix."""
    for name in ADAPTER_FILES:
        path = Path(run) / "adapter" / name
        why = "is missing" if not path.is_file() else unusable(path)
        if why:
            return [
                f"run={run}: adapter/{name} {why}; the run's adapter is damaged: put that file back from a copy "
                "of the run, or train the run again (overwrite=true replaces it)"
            ]
    return []
