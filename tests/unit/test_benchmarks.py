"""finetune/benchmarks without training: the prompt ids lm_eval sends for our chat-format tasks, the task lookup
and its errors, the results table, the sweep metric names. Real lm_eval, the real Llama 2 tokenizer, a tiny
random Llama 2 built in the test."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT
from finetune.benchmarks import backends, objective, report, runner, tasks
from finetune.benchmarks.options import BenchmarksConfig, argv_shorthand
from finetune.config import ConfigError, ModelConfig
from finetune.data import chat_format
from finetune.model import tokenizer as tokenizer_mod


@pytest.fixture(scope="module")
def tok():
    return tokenizer_mod.load_tokenizer(ModelConfig(name="llama2", path=str(ROOT / "data/llama2-tokenizer")))


@pytest.fixture(scope="module")
def lm(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    net = LlamaForCausalLM(
        LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=32000)
    ).eval()
    return runner.hflm(net, tok, batch_size=2)


def test_lm_evals_chat_requests_carry_the_ids_training_used(lm, tok):
    """The context lm_eval builds with apply_chat_template=True, tokenized as its generate and log-likelihood
    paths do, is encode_prompt's ids for the same user message: one BOS, `[INST] ... [/INST]`, no second BOS."""
    built = tasks.build(["gsm8k_mini", "hellaswag_mini"], None)
    for task in built.tasks:
        task.build_all_requests(
            limit=3, apply_chat_template=True, chat_template=lm.apply_chat_template, tokenizer_name="llama2"
        )
        docs = list(task.eval_docs)[:3]
        contexts = {inst.doc_id: inst.args[0] for inst in task.instances}
        assert len(contexts) == 3
        for doc_id, context in contexts.items():
            want = chat_format.encode_prompt(tok.sp, [{"role": "user", "content": task.doc_to_text(docs[doc_id])}])
            ids, _ = lm.tok_batch_encode([context])  # what generate_until feeds the model
            assert ids[0].tolist() == want
            assert lm.tok_encode(context) == want  # what the log-likelihood path encodes
            assert want[0] == chat_format.BOS_ID and want.count(chat_format.BOS_ID) == 1
        assert runner.chat_ids_match(lm, tok.sp, task.doc_to_text(docs[0]))


def test_an_unknown_task_lists_the_shipped_and_included_ones_in_one_line(tmp_path):
    own = tmp_path / "mine"
    own.mkdir()
    (own / "my_task.yaml").write_text(
        "task: my_task\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        "    test: items.jsonl\ntest_split: test\noutput_type: loglikelihood\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list:\n  - metric: acc\n"
    )
    with pytest.raises(tasks.BenchmarkError) as err:
        tasks.check(["gsm8k_mini", "hellaswag_mini_typo"], str(own))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("benchmarks: unknown task hellaswag_mini_typo; available here (")
    assert "gsm8k_mini, hellaswag_mini, my_task; or any lm_eval task name" in msg
    assert tasks.check(["my_task", "hellaswag_mini"], str(own)) == []  # found: none of them is a stock task
    with pytest.raises(tasks.BenchmarkError, match=r"mine/my_task.yaml: task my_task cannot read its data"):
        tasks.build(["my_task"], str(own))  # items.jsonl is not there
    with pytest.raises(tasks.BenchmarkError, match=r"benchmarks.include=/no/such/folder: no such folder"):
        tasks.check(["gsm8k_mini"], "/no/such/folder")


def test_a_stock_task_while_offline_says_which_and_how_to_get_it(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(tasks.BenchmarkError) as err:
        tasks.build(["arc_easy"], None)
    assert "lm_eval task arc_easy (" in str(err.value)
    assert "downloads its data from the Hugging Face Hub and this process is offline" in str(err.value)
    assert "use a shipped task (gsm8k_mini, hellaswag_mini)" in str(err.value)


def test_backend_vllm_says_in_one_line_that_it_is_not_installed():
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(tasks.BenchmarkError) as err:
        backends.check(BenchmarksConfig(tasks=["gsm8k_mini"], backend="vllm"), ROOT)
    assert str(err.value) == (
        "benchmarks.backend=vllm: vLLM is not installed here (pip install vllm, on a CUDA "
        "machine); benchmarks.backend=hf (the default) runs the same tasks through transformers"
    )
    with pytest.raises(ConfigError, match="benchmarks.backend=tgi: use one of hf, vllm"):
        backends.check(BenchmarksConfig(backend="tgi"), ROOT)


def test_rows_pair_base_and_tuned_per_metric_and_filter():
    base = {
        "results": {
            "gsm8k_mini": {
                "alias": "gsm8k_mini",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.1,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
            }
        }
    }
    tuned = {
        "results": {
            "gsm8k_mini": {
                "alias": "gsm8k_mini",
                "exact_match,strict-match": 0.75,
                "exact_match_stderr,strict-match": 0.2,
                "exact_match,flexible-extract": 0.5,
                "exact_match_stderr,flexible-extract": "N/A",
            }
        },
        "n-samples": {"gsm8k_mini": {"original": 200, "effective": 4}},
    }
    rows = report.rows(base, tuned)
    assert rows == [
        {
            "task": "gsm8k_mini",
            "metric": "exact_match,strict-match",
            "base": 0.25,
            "tuned": 0.75,
            "delta": 0.5,
            "stderr": 0.2,
            "n": 4,
        },
        {
            "task": "gsm8k_mini",
            "metric": "exact_match,flexible-extract",
            "base": 0.5,
            "tuned": 0.5,
            "delta": 0.0,
            "stderr": None,
            "n": 4,
        },
    ]
    text = report.table(rows, "llama2_tiny (nf4)", "run (adapter, nf4)")
    assert "gsm8k_mini       exact_match,strict-match       0.2500   0.7500  +0.5000   0.2000     4" in text
    assert report.rows(None, tuned)[0]["base"] is None and report.rows(None, tuned)[0]["delta"] is None


def test_sweep_metric_names_the_task_and_checks_the_metric(tmp_path):
    from finetune.sweeps.space import Sweep

    def sweep(metric):
        return Sweep(
            path=tmp_path / "s.yaml",
            method="grid",
            metric=metric,
            goal="maximize",
            command=[],
            program=None,
            run_cap=None,
        )

    s = sweep("benchmark/hellaswag_mini/acc_norm")
    assert "each trial scores hellaswag_mini at its end" in objective.prepare(s)
    assert s.metric == "eval/benchmark/hellaswag_mini/acc_norm"
    assert s.metrics_key == report.log_key("hellaswag_mini", "acc_norm") == "eval_benchmark/hellaswag_mini/acc_norm"
    assert s.fixed["eval.benchmarks"] == "[hellaswag_mini]"
    assert objective.prepare(sweep("eval/loss")) is None
    logged = "task gsm8k_mini logs exact_match,strict-match, exact_match,flexible-extract"
    with pytest.raises(ConfigError, match=logged):
        objective.prepare(sweep("benchmark/gsm8k_mini/exact_match"))


def test_benchmarks_list_on_the_command_line_is_the_tasks_key():
    assert argv_shorthand(["run=x", "benchmarks=[a,b]", "benchmarks.limit=3"]) == [
        "run=x",
        "benchmarks.tasks=[a,b]",
        "benchmarks.limit=3",
    ]


def test_shipped_subsets_match_their_provenance():
    """Every shipped data file has the sha256 its PROVENANCE.md states, a LICENSE, and 200 items."""
    import hashlib

    for folder in sorted(p for p in tasks.SHIPPED.iterdir() if p.is_dir()):
        data = [p for p in folder.glob("*.jsonl")]
        assert len(data) == 1 and (folder / "LICENSE").is_file()
        digest = hashlib.sha256(data[0].read_bytes()).hexdigest()
        assert f"`{digest}`" in (folder / "PROVENANCE.md").read_text()
        assert len([json.loads(line) for line in data[0].read_text().splitlines()]) == 200
