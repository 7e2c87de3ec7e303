"""Local hyperparameter sweeps over wandb's sweep file format: the search space and proposals (`space`), and
the leaderboard and plot (`report`). Trials are subprocesses of the file's command.

Imports config and runtime only; trials reach the rest of the toolkit through train.py.
"""
