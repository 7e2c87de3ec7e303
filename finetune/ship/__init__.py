"""Shipping a trained run: the streaming merge into safetensors, its verification against the model as
trained, and publishing to the Hugging Face Hub.

May import config, runtime, data, model and runs; never training, planning or sweeps.
"""
