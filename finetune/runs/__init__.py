"""The run directory and everything in it: one directory per run for every rank, config.yaml, checkpoints that
are complete or absent, exact resume, metrics.jsonl and loss.png, the adapter and its model card.

chat, evaluate, export and publish read a run only through here (`rundir.run_config`, `rundir.finished`,
`metrics.read`). May import config, runtime and data (the chat format, for the card); never model, training,
ship, planning or sweeps.
"""
