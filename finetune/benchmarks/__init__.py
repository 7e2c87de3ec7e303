"""Standard benchmarks through lm-evaluation-harness (`lm_eval`): which tasks (the shipped offline subsets in
data/benchmarks, a user's folder, lm_eval's stock names), running them on a model in memory, the base-vs-tuned
table and benchmarks.json, the card's `model-index`, a sweep's benchmark metric, and the training callback.

Imports config and runtime only: evaluate.py, sweep.py, training/ and runs/ hand it models and run folders.
"""
