"""A test double of the Hugging Face Hub's HTTP API: in memory, stdlib only, started by the tests.

It is NOT the Hub: it speaks only the routes the unmodified `huggingface_hub` 2.x client uses to create a
repo, make a branch, commit (regular files inline, `*.safetensors` and `*.gguf` through the LFS "basic"
transfer, as the real Hub asks for weights) and download (repo info, tree, resolve). It checks bearer tokens
and hides private repos from anyone else, as the Hub does. It does not model Xet storage (clients must run with
`HF_HUB_DISABLE_XET=1`), YAML validation, gating, rate limits, or real permission rules.

    hub = HubDouble(tokens={"hf_...": "tester"}).start()   # hub.url -> HF_ENDPOINT
    ...; hub.stop()

A test module gets it as its `hub` fixture with `hub = hub_double.served({TOKEN: USER})`, and runs publish.py
against it with `hub_double.publish(...)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

LFS_SUFFIXES = (".safetensors", ".gguf")  # weights go through LFS, as the Hub's .gitattributes asks


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, tuple[bytes, bool]]] = field(default_factory=dict)  # sha -> path -> (bytes, lfs)
    messages: dict[str, str] = field(default_factory=dict)  # sha -> commit message


class HubDouble:
    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path), for tests asserting nothing was sent
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HubDouble:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return {p: c for p, (c, _) in repo.commits[repo.branches[revision]].items()}

    def commit(self, repo: Repo, branch: str, files: dict, message: str) -> str:
        sha = hashlib.sha1(json.dumps([branch, message, sorted(files), len(repo.commits)]).encode()).hexdigest()
        repo.commits[sha], repo.messages[sha], repo.branches[branch] = files, message, sha
        return sha


class Handler(BaseHTTPRequestHandler):
    """The Hub's HTTP routes that huggingface_hub's upload and download calls use, over the server's HubDouble."""

    @property
    def hub(self) -> HubDouble:
        return self.server.hub

    def log_message(self, *args):  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def user(self):
        auth = self.headers.get("Authorization", "")
        return self.hub.tokens.get(auth.removeprefix("Bearer ").strip()) if auth.startswith("Bearer ") else None

    def reply(self, status: int, body=None, headers: dict | None = None, raw: bytes | None = None):
        data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, status: int, message: str, code: str | None = None):
        self.reply(status, {"error": message}, {"X-Error-Code": code} if code else None)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

    def repo(self, repo_id: str, write: bool = False):
        """The repo if this caller may see it (and write to it); else answers 401/403 as the Hub does."""
        repo, user = self.hub.repos.get(repo_id), self.user()
        if repo is None or (repo.private and user != repo.owner):
            self.error(401, f"Repository Not Found for url: {self.path}.", "RepoNotFound")
            return None
        if write and user != repo.owner:
            self.error(403, "You don't have the rights to write to this repository")
            return None
        return repo

    def route(self):
        self.hub.requests.append((self.command, self.path))
        parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
        with self.hub.lock:
            for handler in (self.api, self.lfs, self.resolve):
                if handler(parts):
                    return
        self.error(404, f"the Hub test double has no route for {self.command} {self.path}")

    do_GET = do_POST = do_PUT = do_HEAD = route

    # ------------------------------------------------------------------ /api/...
    def api(self, p) -> bool:
        if p[:1] != ["api"]:
            return False
        if p[1:] == ["whoami-v2"]:
            user = self.user()
            if user:
                self.reply(200, {"type": "user", "name": user, "orgs": []})
            else:
                self.error(401, "Invalid token")
        elif p[1:] == ["repos", "create"]:
            self.create_repo(json.loads(self.body()))
        elif p[1:] == ["validate-yaml"]:
            self.reply(200, {"errors": [], "warnings": []})
        elif p[1] == "models" and len(p) >= 4:
            self.model_route("/".join(p[2:4]), p[4:])
        else:
            return False
        return True

    def create_repo(self, req):
        user = self.user()
        if user is None:
            return self.error(401, "Invalid credentials in Authorization header")
        repo_id = f"{req.get('organization') or user}/{req['name']}"
        if req.get("organization") not in (None, user):
            return self.error(403, f"You don't have the rights to create a repo under {req['organization']}")
        if repo_id in self.hub.repos:
            return self.reply(409, {"error": "You already created this model repo", "url": f"{self.hub.url}/{repo_id}"})
        repo = self.hub.repos[repo_id] = Repo(
            owner=user, private=req.get("visibility", "public") == "private" or bool(req.get("private"))
        )
        self.hub.commit(
            repo,
            "main",
            {
                ".gitattributes": (
                    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.gguf filter=lfs diff=lfs merge=lfs -text\n",
                    False,
                )
            },
            "initial commit",
        )
        self.reply(200, {"url": f"{self.hub.url}/{repo_id}"})

    def model_route(self, repo_id: str, rest: list[str]):
        write = self.command == "POST"
        repo = self.repo(repo_id, write=write)
        if repo is None:
            return
        if not rest or rest[0] == "revision":
            rev = rest[1] if rest else "main"
            sha = repo.branches.get(rev, rev if rev in repo.commits else None)
            if sha is None:
                return self.error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            self.reply(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": f} for f in sorted(repo.commits[sha])],
                },
            )
        elif rest[0] == "tree":
            sha = repo.branches.get(rest[1], rest[1])
            if sha not in repo.commits:
                return self.error(404, f"Invalid rev id: {rest[1]}", "RevisionNotFound")
            self.reply(200, [tree_entry(path, c, lfs) for path, (c, lfs) in sorted(repo.commits[sha].items())])
        elif rest[0] == "preupload":
            files = json.loads(self.body())["files"]
            self.reply(
                200,
                {
                    "files": [
                        {
                            "path": f["path"],
                            "shouldIgnore": False,
                            "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                        }
                        for f in files
                    ]
                },
            )
        elif rest[0] == "branch":
            if rest[1] in repo.branches:
                return self.error(409, f"Reference already exists: {rest[1]}")
            repo.branches[rest[1]] = repo.branches["main"]
            self.reply(200, {})
        elif rest[0] == "commit":
            self.commit(repo_id, repo, rest[1])
        else:
            self.error(404, f"no route api/models/{repo_id}/{'/'.join(rest)}")

    def commit(self, repo_id: str, repo: Repo, branch: str):
        if branch not in repo.branches:
            return self.error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        files = dict(repo.commits[repo.branches[branch]])
        message = ""
        for line in self.body().decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value["summary"]
            elif key == "file":
                files[value["path"]] = (base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in self.hub.lfs:
                    return self.error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = (self.hub.lfs[value["oid"]], True)
            elif key == "deletedFile":
                files.pop(value["path"], None)
        sha = self.hub.commit(repo, branch, files, message)
        self.reply(
            200, {"commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
        )

    # ------------------------------------------------------------------ LFS: batch + basic upload
    def lfs(self, p) -> bool:
        if p[:1] == ["lfs-upload"] and self.command == "PUT":
            content = self.body()
            if hashlib.sha256(content).hexdigest() != p[1]:
                self.error(400, "sha256 mismatch")
            else:
                self.hub.lfs[p[1]] = content
                self.reply(200, {})
            return True
        if len(p) == 6 and p[1].endswith(".git") and p[2:] == ["info", "lfs", "objects", "batch"]:
            repo = self.repo(f"{p[0]}/{p[1].removesuffix('.git')}", write=True)
            if repo is None:
                return True
            req = json.loads(self.body())
            objects = [
                {
                    "oid": o["oid"],
                    "size": o["size"],
                    **(
                        {}
                        if o["oid"] in self.hub.lfs
                        else {"actions": {"upload": {"href": f"{self.hub.url}/lfs-upload/{o['oid']}"}}}
                    ),
                }
                for o in req["objects"]
            ]
            self.reply(200, {"transfer": "basic", "objects": objects})
            return True
        return False

    # ------------------------------------------------------------------ /{repo}/resolve/{rev}/{path}
    def resolve(self, p) -> bool:
        if len(p) < 5 or p[2] != "resolve" or self.command not in ("GET", "HEAD"):
            return False
        repo = self.repo(f"{p[0]}/{p[1]}")
        if repo is None:
            return True
        sha = repo.branches.get(p[3], p[3])
        entry = repo.commits.get(sha, {}).get("/".join(p[4:]))
        if entry is None:
            self.error(404, "Entry not found", "EntryNotFound")
            return True
        content, lfs = entry
        etag = hashlib.sha256(content).hexdigest() if lfs else git_blob_sha(content)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"'}
        if lfs:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(content))})
        self.reply(200, headers=headers, raw=content)
        return True


def tree_entry(path: str, content: bytes, lfs: bool) -> dict:
    entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
    if lfs:
        entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
    return entry


def served(tokens: dict[str, str], scope: str = "module"):
    """A pytest fixture (assign it to `hub` in a test module): the double accepting `tokens` ({token: user name}),
    started once per `scope` and stopped after it."""

    @pytest.fixture(scope=scope)
    def hub():
        double = HubDouble(tokens=tokens).start()
        yield double
        double.stop()

    return hub


def adapter_copy():
    """A pytest fixture (assign it to `run` in a test module): a run directory of the test's own holding a copy of
    the session's tiny SFT run's adapter/, which is what publish.py reads; the test may change it freely."""

    @pytest.fixture
    def run(tiny_sft_run, tmp_path):
        dst = tmp_path / "run"
        shutil.copytree(tiny_sft_run / "adapter", dst / "adapter")
        return dst

    return run


def env(hub: HubDouble, tmp_path, token: str | None) -> dict:
    """Online towards the double only, as a user holding `token` (None or "": no token); HF_HOME empty so no
    `hf auth login` token of this machine is read."""
    return {
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": token or "",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf_home"),
    }


def publish(run, hub: HubDouble, tmp_path, *overrides: str, token: str | None, check: bool = False):
    """`publish.py run=<run>` against the running double `hub` with `env`; the finished process, whatever its exit
    code unless `check`."""
    from tests.conftest import run_entry

    return run_entry("publish.py", f"run={run}", *overrides, env=env(hub, tmp_path, token), check=check)
