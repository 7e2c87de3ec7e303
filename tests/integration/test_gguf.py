"""export.py format=gguf on the tiny QLoRA run: f16, q8_0, a Python 4-bit type and a llama.cpp K-quant, each
loaded in llama.cpp and verified against merged/; the Modelfile, the card, and publishing the folder. The
conversion itself is also checked on a model whose attention and logits are peaked (the tiny random model's
are nearly flat, so a conversion bug moved its logits by little more than f16 rounding)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_entry
from tests.hub_double import HubDouble
from finetune.data import chat_format

pytestmark = pytest.mark.slow
TYPES = ("f16", "q8_0", "q4_0", "q4_k_m")
TOKEN = "hf_" + "T3stT0ken" * 4


@pytest.fixture(scope="module")
def exported(tiny_sft_run, tmp_path_factory):
    """The tiny run exported once to every type above (one merge, one reference pass)."""
    run = tmp_path_factory.mktemp("gguf") / tiny_sft_run.name
    shutil.copytree(tiny_sft_run, run, ignore=shutil.ignore_patterns("checkpoints", "merged", "gguf"))
    proc = run_entry(
        "export.py",
        f"run={run}",
        "format=gguf",
        f"gguf.type=[{','.join(TYPES)}]",
        "verify.prompts=2",
        "verify.max_new_tokens=6",
        "gguf.sequences=4",
    )
    return run, proc


def test_every_type_is_written_verified_and_kept(exported):
    run, proc = exported
    out = run / "gguf"
    checks = json.loads((out / "verification.json").read_text())["files"]
    assert sorted(checks) == sorted(f"{run.name}.{t}.gguf" for t in TYPES)
    for t in TYPES:
        c = checks[f"{run.name}.{t}.gguf"]
        assert c["ok"] and c["template_ids_exact"] and c["prompts"] == 2 and c["scored_tokens"] > 100
        assert (out / f"Modelfile.{t}").is_file() and f"gguf: {run.name}.{t}.gguf" in proc.stdout
    # measured on this run (CPU): f16 ~1e-3, q8_0 ~1e-2 relative; 4-bit within a few % perplexity
    assert checks[f"{run.name}.f16.gguf"]["gate"] == "logits" and checks[f"{run.name}.f16.gguf"]["relative"] < 1e-2
    assert checks[f"{run.name}.q8_0.gguf"]["relative"] < 5e-2
    for t in ("q4_0", "q4_k_m"):
        assert checks[f"{run.name}.{t}.gguf"]["gate"] == "perplexity"
        assert checks[f"{run.name}.{t}.gguf"]["ppl_ratio"] < 1.08
    assert not list(out.glob("*.partial*")) and (out / "LICENSE-LLAMA2").is_file()
    assert not [
        p for p in run.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".pkl") and "checkpoints" not in p.parts
    ], "adapter/, merged/ and gguf/ hold no pickle"


def test_llama_cpp_loads_it_with_our_vocabulary_and_template(exported, tiny_sft_run):
    import sentencepiece as spm
    from llama_cpp import Llama

    from finetune.ship import llamacpp

    run, _ = exported
    sp = spm.SentencePieceProcessor(model_file=str(run / "merged" / "tokenizer.model"))
    llm = Llama(model_path=str(run / "gguf" / f"{run.name}.q4_0.gguf"), n_ctx=512, verbose=False)
    assert (llm.token_bos(), llm.token_eos(), llm.n_vocab()) == (1, 2, 32000)
    assert llm.metadata["tokenizer.chat_template"] == chat_format.CHAT_TEMPLATE
    assert llm.metadata["tokenizer.ggml.padding_token_id"] == "0"  # pad is <unk>, as trained
    for text in ("Hello  world, 日本語 😀", "a    b\n  c"):  # llama.cpp's own SentencePiece = ours
        assert llm.tokenize(text.encode(), add_bos=False) == sp.encode(text)
    assert llamacpp.template_ids(llm, llamacpp.TEMPLATE_PROBE) == chat_format.encode_prompt(sp, llamacpp.TEMPLATE_PROBE)


def test_gguf_card_marks_a_gguf_repository(exported):
    from huggingface_hub import ModelCard

    run, _ = exported
    card = ModelCard.load(run / "gguf" / "README.md")
    assert card.data.library_name == "gguf" and card.data.license == "llama2"
    assert {"gguf", "q4_0", "q4_k_m", "f16", "q8_0"} <= set(card.data.tags)
    assert card.data.to_dict()["quantization"] == sorted(TYPES)
    assert "## GGUF files" in card.text and f"`{run.name}.q4_k_m.gguf`" in card.text and "ollama create" in card.text


def test_failed_verification_leaves_nothing(exported, tmp_path):
    from finetune import export
    from finetune.runs import rundir
    from finetune.ship.gguf import GGUFError

    run = tmp_path / "run"
    shutil.copytree(exported[0], run, ignore=shutil.ignore_patterns("gguf"))
    cfg = export.ExportConfig(
        run=str(run),
        format="gguf",
        gguf=export.GGUFConfig(type=["f16", "q8_0"], tolerance=1e-9, sequences=2),
        verify=export.VerifyConfig(prompts=1, max_new_tokens=2),
    )
    with pytest.raises(
        GGUFError,
        match=r"f16 GGUF failed verification in llama.cpp .* relative max \|dlogits\| "
        r".*Nothing was written .*pass gguf.tolerance=",
    ):
        export.export_gguf(cfg, rundir.run_config(run), run)
    assert [p.name for p in (run / "gguf").iterdir()] == []


def test_unknown_type_is_refused_before_anything_loads(exported):
    proc = run_entry("export.py", f"run={exported[0]}", "format=gguf", "gguf.type=q4_k_x", check=False)
    assert proc.returncode == 2 and "gguf.type=q4_k_x: use one or more of f32, f16" in proc.stderr


def test_publish_gguf_through_the_hub_double(exported, tmp_path):
    run, _ = exported
    hub = HubDouble(tokens={TOKEN: "tester"}).start()
    try:
        env = {
            "HF_ENDPOINT": hub.url,
            "HF_TOKEN": TOKEN,
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
        }
        proc = run_entry("publish.py", f"run={run}", "repo_id=tester/tiny-gguf", "what=gguf", env=env)
        assert f"published: {hub.url}/tester/tiny-gguf/commit/" in proc.stdout
        remote = hub.files("tester/tiny-gguf")
        local = {p.name: p.read_bytes() for p in (run / "gguf").iterdir()}
        assert {k: v for k, v in remote.items() if k != ".gitattributes"} == local
        assert {f"Modelfile.{t}" for t in TYPES} <= set(remote) and "README.md" in remote
    finally:
        hub.stop()


def peaked_merged(folder):
    """A merged/ folder of a Llama 2 architecture at toy size whose attention is peaked (Q and K x8: a wrong rotary
    layout changes which tokens each head reads) and whose logits are not flat (lm_head x10: max |logits| ~8)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import ROOT

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=32000,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )
    net = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.mul_(
                8.0 if name.endswith(("q_proj.weight", "k_proj.weight")) else 10.0 if name == "lm_head.weight" else 1.0
            )
    net.save_pretrained(folder, max_shard_size="5MB")  # sharded, with the index export writes
    shutil.copy(ROOT / "data" / "llama2-tokenizer" / "tokenizer.model", folder / "tokenizer.model")


def test_conversion_is_exact_on_a_model_with_peaked_logits(tmp_path):
    """Measured (2-core CPU): f32 5.7e-7 and f16 8.4e-4 relative. With K rows left unpermuted the f32 file drifts
    0.92 (2.6e-2 on the tiny random model), with the norm eps written as 1e-6 instead of 1e-5 2.0e-2 (1.3e-2)."""
    import sentencepiece as spm

    from finetune.ship import gguf, llamacpp

    merged = tmp_path / "merged"
    peaked_merged(merged)
    sp = spm.SentencePieceProcessor(model_file=str(merged / "tokenizer.model"))
    prompts = [
        chat_format.encode_prompt(sp, [{"role": "user", "content": text}])
        for text in ("What is the capital of France?", "Write a haiku about rain.", "Explain LoRA in one line.")
    ]
    sequences = [(ids, [1] * len(ids)) for ids in prompts]
    reference = llamacpp.merged_outputs(merged, prompts, sequences, 6)
    checks = {}
    for gtype in ("f32", "f16"):
        gguf.write(merged, tmp_path / f"x.{gtype}.gguf", gtype, "peaked")
        checks[gtype] = llamacpp.check(
            tmp_path / f"x.{gtype}.gguf", gtype, gguf.bits(gtype), reference, prompts, sequences, sp, 6, None
        )
    assert checks["f32"].logit_scale > 5  # not flat
    assert checks["f32"].relative < 1e-5 and checks["f32"].same_generations == 3, checks["f32"].summary()
    assert checks["f16"].relative < 5e-3 and checks["f16"].ok, checks["f16"].summary()


def test_export_prints_only_what_a_user_can_act_on(exported):
    """No notices of the gguf writer or llama.cpp's quantizer; its fallbacks as one line; each count of identical
    greedy answers says whether a difference is expected."""
    run, proc = exported
    out = proc.stdout + proc.stderr
    for noise in (
        "Little Endian",
        "Writing the following files",
        ".partial",
        "falling back",
        "llama_model_loader",
        "converting to",
    ):
        assert noise not in out, noise
    [note] = [line for line in out.splitlines() if "llama.cpp's fallback" in line]
    assert note.startswith(f"gguf: {run.name}.q4_k_m.gguf: ") and "which a q4_k_m block of 256 does not divide" in note
    counts = [line for line in out.splitlines() if "greedy generations identical on" in line and "gguf:" in line]
    assert len(counts) == len(TYPES)
    assert all("identical on 2/2 prompts;" in c or "expected" in c for c in counts), counts
