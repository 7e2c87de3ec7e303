"""What the shared TrainingArguments say about the machine they run on."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import compose
from finetune import config
from finetune.training import args


@pytest.mark.skipif(torch.cuda.is_available(), reason="Liger runs on CUDA")
def test_liger_on_a_cpu_says_in_one_line_that_it_is_ignored(tmp_path, capsys):
    built = args.common_args(config.load(compose("recipe=tiny_lora", "trainer.liger=true")), tmp_path, False)
    assert capsys.readouterr().out == (
        "trainer.liger=true: ignored without CUDA (Liger's kernels are Triton GPU kernels); training without them\n"
    )
    assert built["use_cpu"] is True
    args.common_args(config.load(compose("recipe=tiny_lora")), tmp_path, False)
    assert capsys.readouterr().out == ""
