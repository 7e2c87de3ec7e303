"""Publish a run's adapter/, merged/ or gguf/ folder to the Hugging Face Hub, in one commit, or say exactly why not.

The token comes from `HF_TOKEN` or `hf auth login` (huggingface_hub's `get_token`), is passed to the client
only, and is never printed or written. A folder is refused before anything is sent when any file, file name or
folder name holds something that looks like a token (`hf_` + 30 or more letters/digits, the legacy `api_` shapes,
or the token in use, whether or not one is set), read as bytes, as text in every Unicode encoding a file may be in
(UTF-16/32 in either byte order, with or without a byte order mark, at any alignment; UTF-7) and with JSON `\\u`
escapes undone; and so is a folder holding a pickle (`.bin`, `.pt`, `.pkl`, ...), any file outside the allow-list
of what a model repository holds (`ALLOWED`), in any sub-folder, or no model file at all: what we publish is
safetensors, GGUF and text.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from finetune.config import UserError

# A Hub user access token is `hf_` + 34 letters; older shapes are `api_` / `api_org_` + 34 letters. Digits are
# allowed after `hf_` so that a token of another generation or a test double's is refused too.
TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}|\bapi_(?:org_)?[A-Za-z]{34}\b")
JSON_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")
# Wide encodings with their code unit size: BOM-less text in them is found by its NUL bytes, read at every
# alignment (text after a binary header can start at any byte).
WIDE = (("utf-16-le", 2), ("utf-16-be", 2), ("utf-32-le", 4), ("utf-32-be", 4))
# Where the model itself is, by folder: a folder without it publishes a repository nobody can load.
MODEL_FILES = {"adapter": "adapter_model.safetensors", "merged": "*.safetensors", "gguf": "*.gguf"}
# What a model repository holds (weights, configs, tokenizer, template, cards, licences); anything else is refused
# by name: a scan for secrets cannot know every encoding a file may hide one in.
ALLOWED = (
    "*.safetensors",
    "*.gguf",
    "*.json",
    "*.jinja",
    "*.md",
    "tokenizer.model",
    "Modelfile*",
    "LICENSE*",
    "NOTICE",
)
# Pickle-based formats: loading one runs arbitrary code. Everything we ship is safetensors, GGUF or text.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class PublishError(UserError, ValueError):
    """Publishing stopped: no token, a refused token, an unreachable Hub, or a folder that must not go out."""


@dataclass
class Plan:
    folder: Path
    repo_id: str
    private: bool
    revision: str | None
    message: str
    files: list[tuple[str, int]]  # (path in repo, bytes)

    def describe(self) -> str:
        where = f"{self.repo_id}" + (f" (branch {self.revision})" if self.revision else "")
        lines = [
            f"{'private' if self.private else 'public'} repo {where}, one commit: {self.message!r}",
            visibility(self.repo_id, self.private),
        ]
        lines += [f"  {path}  {size:,} B" for path, size in self.files]
        return "\n".join(lines)


def visibility(repo_id: str, private: bool) -> str:
    if private:
        return (
            f"visibility: PRIVATE - only you (or the members of {repo_id.split('/')[0]}) can see {repo_id}; an "
            "existing public repository is refused, not made private"
        )
    return (
        f"visibility: PUBLIC - anyone can see and download {repo_id} once published (private=true makes a new "
        "repository private)"
    )


def plan(folder: Path, repo_id: str, private: bool, revision: str | None, message: str | None) -> Plan:
    if not (folder / "README.md").is_file():
        raise PublishError(
            f"{folder} has no README.md model card; run `python finetune/export.py run=<run>` "
            "(add merge=true for merged/) first"
        )
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"repo_id={repo_id}: write it as <user or org>/<name>, e.g. me/llama2-13b-oasst-qlora")
    files = sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())
    if pickles := [f for f, _ in files if f.endswith(PICKLE_SUFFIXES)]:
        raise PublishError(
            f"{folder} holds pickle files, refusing to publish: {', '.join(pickles)}. Loading a pickle "
            "runs code; this folder should hold safetensors only. Delete them (training_args.bin: "
            "`python finetune/export.py run=<run>` removes it; it is not needed to load)"
        )
    if others := [f for f, _ in files if not any(fnmatch.fnmatch(Path(f).name, pat) for pat in ALLOWED)]:
        raise PublishError(
            f"{folder} holds files a model repository does not need, refusing to publish: "
            f"{', '.join(others)}. Published are only {', '.join(ALLOWED)}; remove the others (or "
            "publish the folder export.py wrote)"
        )
    want = MODEL_FILES.get(folder.name)
    if want and not any(fnmatch.fnmatch(f, want) for f, _ in files):
        fix = {
            "adapter": "training writes it when the run finishes",
            "merged": f"`python finetune/export.py run={folder.parent} merge=true` writes it",
            "gguf": f"`python finetune/export.py run={folder.parent} format=gguf` writes it",
        }[folder.name]
        raise PublishError(
            f"{folder} holds no model file ({want}), refusing to publish a repository nobody can load; {fix}"
        )
    return Plan(folder, repo_id, private, revision, message or f"Upload {folder.name} from {folder.parent.name}", files)


def token_or_none() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def token_findings(folder: Path, token: str | None) -> list[str]:
    """Files whose name, folder or content looks like it holds a token, each named with where and how it was
    read (never the token: its first 5 characters): every file read whole, except weights (their header only)."""
    found = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if m := find_token(p.name.encode(), token):  # every folder is visited too: its own name is checked
            found.append(f"{redact(str(rel), token)} ({'file' if p.is_file() else 'folder'} name: {shown(m)})")
            continue
        if not p.is_file():
            continue
        for text, encoding in readings(header_or_whole(p)):
            if m := find_token(text, token):
                at = f"byte {m.start()}" if encoding == "byte" else encoding
                found.append(f"{redact(str(rel), token)} ({at}: {shown(m)})")
                break
    return found


def find_token(text: bytes, token: str | None):
    return TOKEN_RE.search(text) or (re.search(re.escape(token.encode()), text) if token else None)


def shown(m) -> str:
    return m.group()[:5].decode(errors="replace") + "..."


def redact(path: str, token: str | None) -> str:
    """A path with every token-like part cut to its first 5 characters (a folder may be named after one)."""
    out = TOKEN_RE.sub(lambda m: m.group()[:5] + b"...", path.encode())
    if token:
        out = out.replace(token.encode(), token.encode()[:5] + b"...")
    return out.decode(errors="replace")


def header_or_whole(p: Path) -> bytes:
    return (
        safetensors_header(p)
        if p.suffix == ".safetensors"
        else gguf_header(p)
        if p.suffix == ".gguf"
        else p.read_bytes()
    )


def readings(blob: bytes) -> list[tuple[bytes, str]]:
    """The bytes as written, then every text reading of them re-encoded to UTF-8: UTF-16/32 (LE and BE) at each
    alignment when they hold NUL bytes (a byte order mark is a code unit like any other; what PowerShell 5's `>`
    and Notepad's "Unicode" write), UTF-7 when they are ASCII with its `+...-` shifts; and each reading again with
    JSON `\\u0068` escapes undone (a tokenizer_config.json may escape every character)."""
    out = [(blob, "byte")]
    if b"\x00" in blob:
        for start, enc in ((s, enc) for s in range(4) for enc, unit in WIDE if s < unit):  # aligned ones first
            out.append((blob[start:].decode(enc, errors="ignore").encode("utf-8", errors="ignore"), f"{enc} text"))
    elif b"+" in blob and blob.isascii():
        out.append((blob.decode("utf-7", errors="ignore").encode("utf-8", errors="ignore"), "utf-7 text"))
    for text, enc in list(out):
        if b"\\u" in text:
            unescaped = JSON_ESCAPE.sub(lambda m: chr(int(m[1], 16)).encode("utf-8", errors="ignore"), text)
            out.append((unescaped, ("" if enc == "byte" else f"{enc}, ") + "JSON \\u escapes"))
    return out


def safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (names, shapes, metadata): where text could hide in a weights file."""
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise PublishError(
                f"{path}: not a safetensors file ({len(head)} bytes); delete it, or write the folder "
                "again (training writes adapter/, export.py merged/)"
            )
        (n,) = struct.unpack("<Q", head)
        return fh.read(min(n, 100_000_000))


def gguf_header(path: Path) -> bytes:
    """The metadata of a GGUF file (strings: name, licence, chat template, vocabulary) up to the tensor data."""
    from gguf import GGUFReader

    try:
        offset = GGUFReader(path).data_offset
    except Exception as exc:  # the reader fails on a cut or corrupt file in many ways (IndexError, ValueError, ...)
        raise PublishError(
            f"{path}: not a readable GGUF file (cut short or corrupt: {type(exc).__name__}); delete "
            f"it, or export it again: `python finetune/export.py run={path.parent.parent} "
            "format=gguf`"
        ) from None
    with path.open("rb") as fh:
        return fh.read(min(offset, 100_000_000))


def publish(p: Plan, token: str) -> str:
    """create_repo (+ branch), then upload_folder as one commit; returns the commit URL."""
    import httpx2  # huggingface_hub 2.x's HTTP client: its TransportError is "could not connect"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        raise PublishError(
            "HF_HUB_OFFLINE is set (the Makefile sets it): publishing needs the network; run "
            "`HF_HUB_OFFLINE=0 python finetune/publish.py ...`"
        )
    api = HfApi(token=token)
    created = False
    try:
        created = api.create_repo(p.repo_id, private=p.private, exist_ok=True, repo_type="model") is not None
        public_now = not api.repo_info(p.repo_id, repo_type="model").private  # an existing repo keeps its own
        if p.private and public_now:
            raise PublishError(
                f"{p.repo_id} already exists and is PUBLIC: private=true would put these files in a "
                "public repository. Make it private on the Hub first (its Settings), or publish with "
                "private=false. Nothing was published."
            )
        if p.revision:
            api.create_branch(p.repo_id, branch=p.revision, exist_ok=True)
        info = api.upload_folder(folder_path=p.folder, repo_id=p.repo_id, revision=p.revision, commit_message=p.message)
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        state = nothing_sent(p, created)
        if status in (401, 403):
            raise PublishError(
                f"{api.endpoint} refused the token ({status}) for {p.repo_id}: check it with "
                "`hf auth whoami`; it needs write access to that namespace. " + state
            ) from None
        raise PublishError(
            f"{api.endpoint} answered {status} for {p.repo_id}: {server_message(exc)}. " + state
        ) from None
    except httpx2.TransportError as exc:
        raise PublishError(
            f"could not reach {api.endpoint} ({type(exc).__name__}: {exc}); check the network, "
            "a proxy, or HF_ENDPOINT. " + nothing_sent(p, created)
        ) from None
    return f"{info.commit_url} ({'PUBLIC: anyone can download it' if public_now else 'private'})"


def nothing_sent(p: Plan, created: bool) -> str:
    if created:
        return f"The repository {p.repo_id} exists, but no commit from this upload was made (uploads are one commit)."
    return "Nothing was published."


def server_message(exc) -> str:
    try:
        return json.loads(exc.response.text).get("error", exc.response.text)[:300]
    except (ValueError, AttributeError):
        return str(exc)[:300]
