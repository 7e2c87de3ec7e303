"""metrics.jsonl continues across a resume: a checkpoint step is a logging step, and the rows before a resume give
the time, token count and summed loss the resumed run adds to its own."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune.runs import metrics


def test_a_checkpoint_step_is_always_logged():
    args = TrainingArguments(output_dir="/tmp/x", report_to="none", use_cpu=True)
    saving, plain = TrainerControl(should_save=True), TrainerControl()
    metrics.LogAtSave().on_step_end(args, TrainerState(), saving)
    metrics.LogAtSave().on_step_end(args, TrainerState(), plain)
    assert saving.should_log and not plain.should_log


def test_rows_before_a_resume_sum_loss_by_window():
    rows = [
        {"step": 5, "loss": 2.0, "time_s": 10.0, "num_tokens": 500},
        {"step": 5, "eval_loss": 1.9, "time_s": 11.0},
        {"step": 8, "loss": 1.0, "time_s": 16.0, "num_tokens": 800},
    ]
    assert metrics.earlier(rows, 8) == {"time_s": 16.0, "num_tokens": 800, "loss_sum": 2.0 * 5 + 1.0 * 3, "step": 8}
