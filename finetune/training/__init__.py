"""Training: TRL's trainers (SFT, DPO, ORPO, SimPO through CPO, KTO) built from the config, with our callbacks
(metrics, samples, tracking), LoRA+ and NEFTune (`extras`), and every check that needs no weights, run from the
entry point before anything is written.

May import config, runtime, data, model and runs; never ship, planning or sweeps. Trainer kinds are a
registry (`TRAINERS`): the entry point never branches on the kind.
"""
