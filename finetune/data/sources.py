"""Raw records from local files, folders or Hugging Face Hub dataset ids, each with where it came from.

JSON Lines (`.jsonl`, `.jsonl.gz`) and `.json` are parsed here, so a malformed line names its file and line and
a non-UTF-8 byte its offset in the file. JSON Lines stream (one line in memory at a time, gzip decompressed on
the fly); a `.json` document is one value and is read whole. Tabular files (`.parquet`, `.csv`) and hub ids
(`org/name`, with `data.split` and `data.revision`) go through `datasets.load_dataset` on one code path
(`_load_dataset`), which converts them to memory-mapped Arrow once, in bounded memory.

Every record comes with its `Position`, from which `records(..., start=position)` reads on without reading
what came before (a seek for JSON Lines): the parallel tokenizer's processes each start at their own share.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from finetune.config import UserError, looks_local

Record = dict
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
TABULAR = {".parquet": "parquet", ".csv": "csv"}  # suffix -> datasets builder
SUFFIXES = JSON_SUFFIXES + tuple(TABULAR)


class Position(NamedTuple):
    """Where a record starts: the file's index in `files(path)` (0 for a hub id), then the byte offset of its
    line in the (uncompressed) JSON Lines file and that line's number, or its row / record index and 0."""

    file: int
    offset: int
    line: int = 0


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
    location = Path(path).expanduser()
    if location.is_dir():
        found = sorted(
            f
            for f in location.rglob("*")
            if f.is_file()
            and supported(f.name)
            and not any(part.startswith(".") for part in f.relative_to(location).parts)
        )
        if not found:
            raise SourceError(
                f"{location}: no data files in this folder (looked for {', '.join(SUFFIXES)}, hidden files skipped)"
            )
        return found
    if not location.is_file():
        raise SourceError(f"{location}: no such file or folder")
    if not supported(location.name):
        raise SourceError(f"{location}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    return [location]


def read_records(path: str, split: str = "train", revision: str | None = None) -> Iterator[tuple[Record, str]]:
    """(record, where) pairs in a stable order; `where` is "file:line", "file row N" or "org/name[split] row N"."""
    for record, where, _ in records(path, split, revision):
        yield record, where


def records(
    path: str, split: str = "train", revision: str | None = None, start: Position | None = None
) -> Iterator[tuple[Record, str, Position]]:
    """(record, where, position) in the order of `read_records`, from `start` (a position this function gave)
    or from the beginning."""
    start = start or Position(0, 0, 0)
    if is_hub_id(path):
        yield from _rows(_load_dataset(path, None, split, revision), f"{path}[{split}]", 0, start.offset)
        return
    for i, f in enumerate(files(path)):
        if i < start.file:
            continue
        at = start if i == start.file else Position(i, 0, 0)
        if ".jsonl" in f.name.lower():
            yield from _json_lines(f, i, at)
        elif f.name.lower().endswith(JSON_SUFFIXES):
            yield from _json_document(f, i, at.offset)
        else:
            yield from _rows(_load_dataset(TABULAR[f.suffix.lower()], str(f), "train", None), str(f), i, at.offset)


def _load_dataset(name: str, data_file: str | None, split: str, revision: str | None):
    """`datasets.load_dataset` for a hub id (`data_file` None) or a local tabular file (`name` = builder)."""
    from datasets import load_dataset

    try:
        return load_dataset(name, data_files=data_file, split=split, revision=revision)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ArrowInvalid, ...)
        if name == "csv" and (bad := _utf8_error(Path(data_file))):  # datasets says only "An error occurred"
            raise bad from None
        what = data_file or f"hub dataset {name} (split={split}, revision={revision or 'main'})"
        fix = (
            "check the file is valid UTF-8 " + name
            if data_file
            else "check the id, data.split and data.revision, the network (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) "
            "and `hf auth login` for gated datasets"
            # org/name is also how a local folder is written: say it is not one, from where it was looked for
            + ("" if name.startswith("/") else f"; nor is there a local file or folder {name} in {Path.cwd()}")
        )
        raise SourceError(f"{what}: could not be read ({type(exc).__name__}: {str(exc)[:300]}); {fix}") from None


def _rows(ds, where: str, file: int, first: int) -> Iterator[tuple[Record, str, Position]]:
    for i, row in enumerate(ds.select(range(first, len(ds))) if first else ds, first):
        yield row, f"{where} row {i + 1}", Position(file, i)


def _gzip_error(f: Path, exc: BaseException) -> SourceError:  # BadGzipFile is an OSError; a cut-off file: EOFError
    return SourceError(
        f"{f}: not a complete gzip file ({type(exc).__name__}: {exc}); re-download or "
        "re-compress it, or give the uncompressed file"
    )


def _empty(f: Path) -> SourceError:
    return SourceError(
        f"{f}: the file is empty"
        + (" (after decompressing)" if f.suffix.lower() == ".gz" else "")
        + "; give a file with one record per line"
    )


def _not_utf8(f: Path, line: int, offset: int, byte: bytes) -> SourceError:
    return SourceError(
        f"{f}:{line}: not UTF-8 (byte offset {offset} in the file"
        f"{', uncompressed' if f.suffix == '.gz' else ''}: {byte!r}); "
        "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`"
    )


def _utf8_error(f: Path) -> SourceError | None:
    """The first byte of `f` that is not UTF-8 (line and offset, as for JSON Lines), read 16 MiB at a time; None if
    it is all UTF-8. A character split across two reads is carried over to the next."""
    offset, line, carry = 0, 1, b""
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            data, carry = carry + chunk, b""
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data":
                    at = exc.start
                    return _not_utf8(f, line + data.count(b"\n", 0, at), offset + at, data[at : at + 1])
                data, carry = data[: exc.start], data[exc.start :]
            line, offset = line + data.count(b"\n"), offset + len(data)
    return _not_utf8(f, line, offset, carry[:1]) if carry else None


def _json_lines(f: Path, file: int, at: Position) -> Iterator[tuple[Record, str, Position]]:
    """JSON Lines, one line in memory at a time, from byte `at.offset` (line `at.line`) of the uncompressed text;
    a byte order mark (Excel and Notepad write one) is skipped."""
    gz = f.suffix.lower() == ".gz"
    offset, lineno, seen = at.offset, at.line or 1, at.offset > 0
    try:
        with gzip.open(f, "rb") if gz else open(f, "rb") as fh:
            fh.seek(offset)  # gzip: decompresses up to it (fast next to tokenizing)
            for raw in fh:
                skip = 3 if offset == 0 and raw.startswith(codecs.BOM_UTF8) else 0
                body = raw[skip:-1] if raw.endswith(b"\n") else raw[skip:]  # an error's column is on this line
                try:
                    line = body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _not_utf8(f, lineno, offset + skip + exc.start, body[exc.start : exc.start + 1]) from None
                if line.strip():
                    seen = True
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise _malformed_line(f, lineno, line, exc) from None
                    if isinstance(record, list) and record and all(isinstance(r, dict) for r in record):
                        raise SourceError(f"{f}:{lineno}: {JSON_LIST}") from None
                    yield record, f"{f}:{lineno}", Position(file, offset, lineno)
                offset += len(raw)
                lineno += 1
    except (OSError, EOFError) as exc:
        if not gz:
            raise
        raise _gzip_error(f, exc) from None
    if not seen:
        raise _empty(f)


JSON_LIST = (
    "the file is one JSON list of records, not JSON Lines (one record per line); name it .json (a list is read "
    "whole) or write one record per line"
)


def _trailing_comma(text: str, exc: json.JSONDecodeError) -> str | None:
    """`[{...}, {...},]`: Python's JSON says only "Expecting value"; JavaScript and many editors allow the comma."""
    if text[exc.pos : exc.pos + 1] in ("]", "}") and text[: exc.pos].rstrip().endswith(","):
        return f"a ',' before '{text[exc.pos]}' (JSON allows no trailing comma); remove it"
    return None


def _malformed_line(f: Path, lineno: int, line: str, exc: json.JSONDecodeError) -> SourceError:
    """A line of JSON Lines that is no JSON value, with the usual cause: a pretty-printed record or list, or a
    comma after each record (a list's items pasted one a line)."""
    start = line.strip()
    if start.startswith("[") and lineno == 1:
        why = JSON_LIST
    elif start == "{" or start.endswith(("{", "[")):
        why = (
            "a record spans several lines (pretty-printed JSON); JSON Lines holds each record on one line "
            "(`jq -c . FILE` rewrites it so)"
        )
    elif exc.msg == "Extra data" and line[exc.pos :].strip() == ",":
        why = "a ',' after the record; JSON Lines has no commas between records: remove them"
    else:
        why = _trailing_comma(line, exc) or "each line must be one complete JSON object"
    return SourceError(f"{f}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno}); {why}")


def _text(f: Path) -> str:
    """The whole file's text: gunzipped for .gz, UTF-8 with or without a byte order mark."""
    gz = f.suffix.lower() == ".gz"
    try:
        raw = gzip.decompress(f.read_bytes()) if gz else f.read_bytes()
    except (OSError, EOFError) as exc:
        raise _gzip_error(f, exc) from None
    if not raw.strip():
        raise _empty(f)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(f, raw.count(b"\n", 0, exc.start) + 1, exc.start, raw[exc.start : exc.start + 1]) from None


def _json_document(f: Path, file: int, first: int) -> Iterator[tuple[Record, str, Position]]:
    """A .json file holding a list of records (or one record), read whole, from record index `first`; several
    documents, one a line, are read as JSON Lines."""
    text = _text(f)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg != "Extra data":  # "Extra data" = several documents: JSON Lines in a .json file
            comma = _trailing_comma(text, exc)
            raise SourceError(
                f"{f}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})" + (f"; {comma}" if comma else "")
            ) from None
        lines = ((r, w) for r, w, _ in _json_lines(f, file, Position(file, 0, 1)))
    else:
        lines = ((r, f"{f} record {i + 1}") for i, r in enumerate(doc if isinstance(doc, list) else [doc]))
    for i, (record, where) in enumerate(lines):
        if i >= first:
            yield record, where, Position(file, i)


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
