"""The planner's long-context estimate against a real step (the issue's GPU row): recipe qlora_7b_16k on the real
Llama-2-7B architecture with random weights (no download), one packed row of 16,384 tokens (four 4,096-token
documents: position ids restart, so transformers builds SDPA's block mask), LongLoRA's embeddings and norms
trained, checkpointing on. Prints peak memory, the estimate and tokens/s; the estimate must be within 15%."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("measures CUDA memory and speed", allow_module_level=True)

from tests.conftest import compose  # noqa: E402
from finetune import config  # noqa: E402
from finetune.model import base as model_base  # noqa: E402
from finetune.model import lora  # noqa: E402
from finetune.model import tokenizer as tokenizer_mod  # noqa: E402
from finetune.planning import planner  # noqa: E402
from finetune.planning import report as plan_report  # noqa: E402

LENGTH, DOCS = 16384, 4


def test_qlora_7b_16k_peak_and_speed_match_the_plan(tmp_path):
    from trl.trainer.utils import add_fused_lm_head

    cfg = config.load(
        compose(
            "recipe=qlora_7b_16k",
            "model.random_init=true",
            f"model.path={tmp_path}/base",
            "trainer.liger=false",
            "trainer.optim=adamw_torch",
        )
    )
    tokenizer = tokenizer_mod.load_tokenizer(cfg.model)
    model_base.prepare_path(cfg.model, tokenizer)
    base = model_base.load_base(cfg.model, cfg.quant, True)
    assert base.config.max_position_embeddings == LENGTH and base.config.rope_parameters["factor"] == 4.0
    add_fused_lm_head(base)  # TRL's tiled LM head, the loss the planner counts without Liger
    net = lora.apply_lora(base, cfg.lora)
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    ids = torch.randint(3, 32000, (1, LENGTH), device="cuda")
    positions = torch.arange(LENGTH // DOCS, device="cuda").repeat(DOCS)[None]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = net(input_ids=ids, position_ids=positions, labels=ids, fused_lm_head=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    tokens_s = 3 * LENGTH / (time.perf_counter() - start)
    measured = torch.cuda.max_memory_allocated()
    s = plan_report.setup(cfg, 1, "ddp")
    estimate = planner.memory(s).allocated
    planned = planner.tokens_per_second(s, planner.GPUS[planner.gpu_named(torch.cuda.get_device_name(0)) or "h100"][0])
    print(
        f"qlora_7b_16k on {torch.cuda.get_device_name(0)}: peak {measured / 2**30:.2f} GiB, estimate "
        f"{estimate / 2**30:.2f} GiB ({(estimate - measured) / measured:+.1%}); {tokens_s:,.0f} tokens/s, "
        f"planned {planned:,.0f}"
    )
    assert estimate == pytest.approx(measured, rel=0.15)
