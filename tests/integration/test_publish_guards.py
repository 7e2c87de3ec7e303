"""publish.py's guards and the README's other publishing claims, against the Hub test double (tests/hub_double.py):
the token in use is found in a folder whatever its shape, a token without write rights (403) publishes nothing and
says so, and `what=merged` uploads the verified merged folder as it is on disk."""

from __future__ import annotations

import json

import pytest

from tests import hub_double
from tests.hub_double import Repo
from finetune.runs import rundir

pytestmark = pytest.mark.slow
TOKEN = "hf_" + "Gu4rdT0ken" * 4
ODD_TOKEN = "corp-proxy-7Q2x9Lm4"  # an enterprise proxy or a Hub-compatible server issues other shapes
USER = "tester"


hub = hub_double.served({TOKEN: USER, ODD_TOKEN: USER})


def publish(run, hub, tmp_path, *overrides, token=TOKEN):
    return hub_double.publish(run, hub, tmp_path, *overrides, token=token)


run = hub_double.adapter_copy()


def test_the_active_token_is_found_whatever_its_shape(run, hub, tmp_path):
    card = run / "adapter" / "README.md"  # a model card someone pasted their setup into
    text = card.read_bytes()
    card.write_bytes(text + f"\nexport HF_TOKEN={ODD_TOKEN}\n".encode())
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/leaky", token=ODD_TOKEN)
    assert proc.returncode == 2, proc.stdout[-2000:]
    at = len(text) + len("\nexport HF_TOKEN=")
    assert f"holds token-like strings, refusing to publish: README.md (byte {at}: corp-...)" in proc.stderr
    assert ODD_TOKEN not in proc.stdout + proc.stderr  # the message shows 5 characters, never the token
    assert len(hub.requests) == before and "tester/leaky" not in hub.repos


def test_a_token_without_write_rights_publishes_nothing(run, hub, tmp_path):
    proc = publish(run, hub, tmp_path, "repo_id=acme/tiny")  # tester is no member of acme: the Hub answers 403
    assert proc.returncode == 2
    assert (
        f"error: {hub.url} refused the token (403) for acme/tiny: check it with `hf auth whoami`; it needs "
        "write access to that namespace. Nothing was published." in proc.stderr
    )
    assert "acme/tiny" not in hub.repos and "Traceback" not in proc.stderr


def test_what_merged_publishes_the_verified_merged_folder(tiny_lora_merged, hub, tmp_path):
    run = tiny_lora_merged
    proc = publish(run, hub, tmp_path, "repo_id=tester/tiny-merged", "what=merged")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"published: {hub.url}/tester/tiny-merged/commit/" in proc.stdout
    remote = {k: v for k, v in hub.files("tester/tiny-merged").items() if k != ".gitattributes"}
    local = {
        p.relative_to(run / "merged").as_posix(): p.read_bytes() for p in (run / "merged").rglob("*") if p.is_file()
    }
    assert remote == local  # every file, byte for byte, in one commit
    assert {"config.json", "model.safetensors.index.json", "verification.json", "README.md"} <= set(remote)
    assert b"library_name: transformers" in remote["README.md"]
    repo = hub.repos["tester/tiny-merged"]
    assert repo.messages[repo.branches["main"]] == f"Upload merged from {run.name}"


def exported_gguf(run):
    """gguf/ as export.py leaves it for the run's adapter, without its model files."""
    gguf = run / "gguf"
    gguf.mkdir()
    (gguf / "README.md").write_text("---\nlicense: llama2\n---\n# card\n")
    (gguf / "verification.json").write_text(json.dumps({"adapter_sha256": rundir.adapter_hash(run), "files": {}}))
    return gguf


def test_a_folder_without_a_model_file_is_refused(run, hub, tmp_path):
    gguf = exported_gguf(run)  # what `export.py format=gguf gguf.type=[]` used to leave
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/no-model", "what=gguf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: {gguf} holds no model file (*.gguf), refusing to publish a repository "
        f"nobody can load; `python finetune/export.py run={run} format=gguf` writes it"
    )
    assert len(hub.requests) == before


def test_a_corrupt_gguf_is_one_line_naming_the_file(run, hub, tmp_path):
    gguf = exported_gguf(run)
    (gguf / "run.q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)  # a header cut short
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/corrupt", "what=gguf")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip() == (
        f"error: {gguf / 'run.q8_0.gguf'}: not a readable GGUF file (cut short or "
        "corrupt: IndexError); delete it, or export it again: `python finetune/export.py "
        f"run={run} format=gguf`"
    )
    assert len(hub.requests) == before


def test_dry_run_and_publish_say_plainly_whether_the_repository_is_public(run, hub, tmp_path):
    dry = publish(run, hub, tmp_path, "repo_id=tester/seen", "dry_run=true")
    assert (
        dry.returncode == 0
        and (
            "visibility: PUBLIC - anyone can see and download tester/seen once published "
            "(private=true makes a new repository private)"
        )
        in dry.stdout
    )
    done = publish(run, hub, tmp_path, "repo_id=tester/hidden", "private=true")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "visibility: PRIVATE - only you (or the members of tester) can see tester/hidden" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith(" (private)") and hub.repos["tester/hidden"].private


def test_private_true_into_an_existing_public_repository_is_refused(run, hub, tmp_path):
    hub.repos["tester/open"] = repo = Repo(owner=USER, private=False)
    hub.commit(repo, "main", {".gitattributes": (b"", False)}, "initial commit")
    proc = publish(run, hub, tmp_path, "repo_id=tester/open", "private=true")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: tester/open already exists and is PUBLIC: private=true would put these "
        "files in a public repository. Make it private on the Hub first (its Settings), "
        "or publish with private=false. Nothing was published."
    )
    assert set(hub.files("tester/open")) == {".gitattributes"}
