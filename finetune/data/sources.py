"""Raw records from local files, folders or Hugging Face Hub dataset ids, each with where it came from.

JSON Lines (`.jsonl`, `.jsonl.gz`) and `.json` are parsed here, so a malformed line names its file and line and
a non-UTF-8 byte its offset in the file. Tabular files (`.parquet`, `.csv`) and hub ids (`org/name`, with
`data.split` and `data.revision`) go through `datasets.load_dataset` on one code path (`_load_dataset`).
"""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterator

from finetune.config import UserError, looks_local

Record = dict
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
TABULAR = {".parquet": "parquet", ".csv": "csv"}  # suffix -> datasets builder
SUFFIXES = JSON_SUFFIXES + tuple(TABULAR)


class SourceError(UserError, ValueError):
    """A file or dataset that cannot be read; the message names the file (and line or byte) and the fix."""


def is_hub_id(path: str) -> bool:
    """`org/name` that is not a local path and does not look like a file name."""
    return not looks_local(path) and not path.endswith(SUFFIXES)


def supported(name: str) -> bool:
    return name.lower().endswith(SUFFIXES)  # `.JSONL` is JSON Lines too


def files(path: str) -> list[Path]:
    """The data files at `path`: the file itself, or every supported file under the folder, sorted. Hidden files
    and folders (`.ipynb_checkpoints/`, `.git/`, editor backups) are skipped: their copies would be read twice."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file() and supported(f.name)
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not found:
            raise SourceError(f"{p}: no data files in this folder (looked for {', '.join(SUFFIXES)}, "
                              "hidden files skipped)")
        return found
    if not p.is_file():
        raise SourceError(f"{p}: no such file or folder")
    if not supported(p.name):
        raise SourceError(f"{p}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    return [p]


def read_records(path: str, split: str = "train", revision: str | None = None) -> Iterator[tuple[Record, str]]:
    """(record, where) pairs in a stable order; `where` is "file:line", "file row N" or "org/name[split] row N"."""
    if is_hub_id(path):
        yield from _rows(_load_dataset(path, None, split, revision), f"{path}[{split}]")
        return
    for f in files(path):
        if f.name.lower().endswith(JSON_SUFFIXES):
            yield from _json_records(f)
        else:
            yield from _rows(_load_dataset(TABULAR[f.suffix.lower()], str(f), "train", None), str(f))


def _load_dataset(name: str, data_file: str | None, split: str, revision: str | None):
    """`datasets.load_dataset` for a hub id (`data_file` None) or a local tabular file (`name` = builder)."""
    from datasets import load_dataset

    try:
        return load_dataset(name, data_files=data_file, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ArrowInvalid, ...)
        what = data_file or f"hub dataset {name} (split={split}, revision={revision or 'main'})"
        fix = ("check the file is valid UTF-8 " + name if data_file else
               "check the id, data.split and data.revision, the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
               "and `huggingface-cli login` for gated datasets")
        raise SourceError(f"{what}: could not be read ({type(exc).__name__}: {str(exc)[:300]}); {fix}") from None


def _rows(ds, where: str) -> Iterator[tuple[Record, str]]:
    for i, row in enumerate(ds):
        yield row, f"{where} row {i + 1}"


def _text(f: Path) -> str:
    """The file's text: gunzipped for .gz, UTF-8 with or without a byte order mark (Excel and Notepad write one)."""
    gz = f.suffix.lower() == ".gz"
    try:
        raw = gzip.decompress(f.read_bytes()) if gz else f.read_bytes()
    except (OSError, EOFError) as exc:  # BadGzipFile is an OSError; a cut-off file ends in EOFError
        raise SourceError(f"{f}: not a complete gzip file ({type(exc).__name__}: {exc}); re-download or "
                          "re-compress it, or give the uncompressed file") from None
    if not raw.strip():
        raise SourceError(f"{f}: the file is empty" + (" (after decompressing)" if gz else "")
                          + "; give a file with one record per line")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise SourceError(f"{f}:{line}: not UTF-8 (byte offset {exc.start} in the file"
                          f"{', uncompressed' if f.suffix == '.gz' else ''}: {raw[exc.start:exc.start + 1]!r}); "
                          "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _json_records(f: Path) -> Iterator[tuple[Record, str]]:
    """A .json file holding a list of records (or one record), or JSON Lines under any of the JSON suffixes."""
    text = _text(f)
    if ".jsonl" not in f.name.lower():
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data" = several documents: read it as JSON Lines below
                raise SourceError(f"{f}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
        else:
            for i, record in enumerate(doc if isinstance(doc, list) else [doc]):
                yield record, f"{f} record {i + 1}"
            return
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{f}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); "
                              "each line must be one complete JSON object") from None
        yield record, f"{f}:{lineno}"


def fingerprint(path: str, split: str = "train", revision: str | None = None) -> str:
    """sha256 of the data's bytes: the local files (names and contents), or a hub dataset's Arrow cache files."""
    h = hashlib.sha256()
    if is_hub_id(path):
        ds = _load_dataset(path, None, split, revision)
        paths = [Path(c["filename"]) for c in ds.cache_files]
        h.update(f"hub:{path}:{split}:{revision}".encode())
    else:
        paths = files(path)
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
