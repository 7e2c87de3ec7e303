"""Shipping a trained run: the streaming merge into safetensors, its verification against the model as
trained, GGUF files for llama.cpp and Ollama (verified in llama.cpp), serving limits, and publishing to the Hub.

May import config, runtime, data, model and runs; never training, planning or sweeps.
"""
