"""The tokenized-data cache: a second load reuses it; a change to the tokenizer, the format code, a setting or
the data re-tokenizes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import pytest
import sentencepiece as spm
from omegaconf import OmegaConf
from sentencepiece import sentencepiece_model_pb2

from tests.conftest import ROOT
from finetune.config import DataConfig
from finetune.data import load as data_load

TOKENIZER = ROOT / "data/llama2-tokenizer/tokenizer.model"
SP = spm.SentencePieceProcessor(model_file=str(TOKENIZER))


def cfg(path, **overrides) -> DataConfig:
    base = {"name": "cachetest", "adapter": "oasst", "path": str(path), "max_samples": 8, "eval_fraction": 0.25}
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), {**base, **overrides}))


@pytest.fixture
def oasst(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETUNE_CACHE", str(tmp_path / "cache"))  # a cache of this test's own
    path = tmp_path / "oasst.jsonl"
    shutil.copy(ROOT / "data/sft/oasst-en100/en_100_tree.jsonl", path)
    return path


def load(dcfg, sp=SP):
    p = data_load.load(dcfg, types.SimpleNamespace(sp=sp))  # data_load.load needs only the SentencePiece
    train, evals, stats = p.train, p.eval, p.stats
    return train["input_ids"], evals["input_ids"] if evals is not None else None, stats


def test_second_load_is_a_hit_with_the_same_tokens(oasst):
    train, evals, stats = load(cfg(oasst))
    assert stats.cache == "miss" and len(train) == 6 and len(evals) == 2
    train2, evals2, stats2 = load(cfg(oasst))
    assert stats2.cache == "hit" and (train2, evals2) == (train, evals)
    assert stats2.examples == stats.examples and stats2.lengths == stats.lengths


@pytest.mark.parametrize(
    "change",
    [{"max_length": 256, "too_long": "truncate"}, {"train_on": "last"}, {"system_prompt": "Be brief."}, {"seed": 1}],
)
def test_a_setting_that_changes_tokens_retokenizes(oasst, change):
    load(cfg(oasst))
    assert load(cfg(oasst, **change))[2].cache == "miss"


def test_changed_data_file_retokenizes(oasst):
    load(cfg(oasst))
    oasst.write_text(oasst.read_text().replace("apartment", "flat"))
    assert load(cfg(oasst))[2].cache == "miss"


def test_changed_tokenizer_retokenizes(oasst):
    train, _, _ = load(cfg(oasst))
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(SP.serialized_model_proto())
    proto.normalizer_spec.add_dummy_prefix = False  # a different tokenizer: no leading "▁" on the first word
    other = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    train2, _, stats = load(cfg(oasst), sp=other)
    assert stats.cache == "miss" and train2 != train


SCRIPT = """
import json, sys, types
sys.path.insert(0, sys.argv[1])
import sentencepiece as spm
from omegaconf import OmegaConf
from finetune.config import DataConfig
from finetune.data import load as data_load
dcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), json.loads(sys.argv[2])))
p = data_load.load(dcfg, types.SimpleNamespace(sp=spm.SentencePieceProcessor(model_file=sys.argv[3])))
train, stats = p.train, p.stats
print(json.dumps({"cache": stats.cache, "first": train[0]["input_ids"], "module": data_load.__file__}))
"""


# Appended to the copy's chat_format.py: its public encoder now drops the "▁" Meta puts before each EOS.
DROP_SPACE_BEFORE_EOS = """

_meta_encode_dialog = encode_dialog


def encode_dialog(sp, messages, train_on="all"):
    ids, mask = _meta_encode_dialog(sp, messages, train_on)
    keep = [i for i in range(len(ids)) if not (ids[i] == 29871 and ids[i + 1:i + 2] == [EOS_ID])]
    return [ids[i] for i in keep], [mask[i] for i in keep]
"""


def test_changed_chat_format_code_retokenizes(oasst, tmp_path):
    """A copy of the package whose chat format drops Meta's space before EOS (an old bug of ours) must not reuse
    tokens cached by the real format."""
    copy = tmp_path / "pkg"
    shutil.copytree(ROOT / "finetune", copy / "finetune", ignore=shutil.ignore_patterns("__pycache__"))

    def run() -> dict:
        args = [
            str(copy),
            json.dumps({"name": "cachetest", "adapter": "oasst", "path": str(oasst), "max_samples": 4}),
            str(TOKENIZER),
        ]
        out = subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert first["module"].startswith(str(copy)) and first["cache"] == "miss"
    assert load(cfg(oasst, max_samples=4, eval_fraction=0.0))[2].cache == "hit", "same code, same key, any process"
    fmt = copy / "finetune" / "data" / "chat_format.py"
    fmt.write_text(fmt.read_text() + DROP_SPACE_BEFORE_EOS)  # a behaviour change, whatever the code looks like
    changed = run()
    assert changed["cache"] == "miss" and changed["first"] != first["first"]
    assert 29871 not in changed["first"][-2:] and first["first"][-2:] == [29871, 2]
