"""Will it fit, and how fast: the memory/throughput arithmetic (`planner`) and its report for a composed config
(`report`), used by plan.py and by train.py before any weight loads.

Imports config and runtime only: a plan needs no model, data or GPU.
"""
