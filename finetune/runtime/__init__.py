"""The process we run in: which rank this is (accelerate's state), what sharding `accelerate launch` set up,
and what a run prints (rank 0 only; one `error:` line for a user's mistake, never a traceback).

Imports only `finetune.config`; never data, model, training or the run directory.
"""
