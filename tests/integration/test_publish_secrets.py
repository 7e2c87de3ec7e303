"""publish.py's secret scan against every form a token was found to leak in, each refused by name before the Hub
test double (tests/hub_double.py) sees a single request, with a token set that the double would accept (so a form
the scan misses would be published). One publish run reads a folder holding every form; each test checks one."""

from __future__ import annotations

import json
import shutil

import pytest

from tests import hub_double

pytestmark = pytest.mark.slow
TOKEN = "hf_" + "S3cretT0k" * 4  # the active token: the double accepts it
SHAPED = "hf_" + "QwErTyUiOpAsDfGhJkLzXcVbNmQwErTyUi"  # the Hub's shape (34 letters), nobody's token here
USER = "tester"


hub = hub_double.served({TOKEN: USER})


def publish(run, hub, tmp_path, *overrides, token=TOKEN):
    return hub_double.publish(run, hub, tmp_path, *overrides, token=token)


run = hub_double.adapter_copy()


@pytest.fixture(scope="module")
def leaky(tiny_sft_run, hub, tmp_path_factory):
    """adapter/ with the token in every form below, published once: (stderr, requests the double saw, process)."""
    tmp = tmp_path_factory.mktemp("leaky")
    adapter = tmp / "run" / "adapter"
    shutil.copytree(tiny_sft_run / "adapter", adapter)
    line = f"export HF_TOKEN={TOKEN}\n"
    (adapter / "utf32.md").write_bytes(line.encode("utf-32"))  # byte order mark + little endian
    (adapter / "utf32be.md").write_bytes(line.encode("utf-32-be"))  # no byte order mark
    # UTF-16 from an odd byte on, no BOM, the token right after a character outside Latin-1: only the odd-offset
    # reading sees it (read from an even byte, the arrow's high byte runs into the token's first letter)
    (adapter / "utf16odd.md").write_bytes(b"#" + f"HF_TOKEN\u2192{TOKEN}\n".encode("utf-16-le"))
    config = json.loads((adapter / "tokenizer_config.json").read_text())
    config["note"] = TOKEN
    escaped = json.dumps(config).replace(TOKEN, "".join(f"\\u{ord(c):04x}" for c in TOKEN))
    (adapter / "tokenizer_config.json").write_text(escaped)
    (adapter / TOKEN).mkdir()
    (adapter / TOKEN / "x.json").write_text("{}")
    (adapter / f"{SHAPED}.json").write_text("{}")
    before = len(hub.requests)
    proc = publish(tmp / "run", hub, tmp, "repo_id=tester/leaky")
    return proc.stderr, len(hub.requests) - before, proc


def test_nothing_is_sent(leaky, hub):
    proc = leaky[2]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "holds token-like strings, refusing to publish: " in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and SHAPED not in proc.stdout + proc.stderr
    assert leaky[1] == 0 and "tester/leaky" not in hub.repos


def test_utf32_with_a_byte_order_mark(leaky):
    assert "utf32.md (utf-32-le text: hf_S3...)" in leaky[0]


def test_utf32_big_endian_without_a_byte_order_mark(leaky):
    assert "utf32be.md (utf-32-be text: hf_S3...)" in leaky[0]


def test_utf16_starting_at_an_odd_byte(leaky):
    assert "utf16odd.md (utf-16-le text: hf_S3...)" in leaky[0]


def test_json_unicode_escapes(leaky):
    assert "tokenizer_config.json (JSON \\u escapes: hf_S3...)" in leaky[0]


def test_a_folder_named_after_the_token(leaky):
    assert "hf_S3... (folder name: hf_S3...)" in leaky[0]


def test_a_token_shaped_file_name(leaky):
    assert "hf_Qw....json (file name: hf_Qw...)" in leaky[0]


def test_a_token_shaped_string_is_refused_without_hf_token(run, hub, tmp_path):
    (run / "adapter" / "notes.md").write_text(f"my key: {SHAPED}\n")
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/noenv", "dry_run=true", token=None)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "holds token-like strings, refusing to publish: notes.md (byte 8: hf_Qw...)" in proc.stderr
    assert len(hub.requests) == before


def test_a_pickle_in_a_sub_folder_is_refused(run, hub, tmp_path):
    (run / "adapter" / "extra").mkdir()
    (run / "adapter" / "extra" / "optimizer.pt").write_bytes(b"\x80\x04\x95pickle")
    before = len(hub.requests)
    proc = publish(run, hub, tmp_path, "repo_id=tester/nested")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout[-2000:]
    assert "holds pickle files, refusing to publish: extra/optimizer.pt. Loading a pickle runs code" in proc.stderr
    assert len(hub.requests) == before and "tester/nested" not in hub.repos
