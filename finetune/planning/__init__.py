"""Will it fit, and how fast: the memory/throughput arithmetic (`planner`) and its report for a composed config
(`report`), used by plan.py and by train.py before any weight loads; `budget`: the fastest per-layer checkpointing
plan within `trainer.memory_budget`.

Imports config and runtime only: a plan needs no model, data or GPU.
"""
