"""launcher: start, check, diagnose and stop inference servers (vllm, sglang, sim)."""

__version__ = "0.1.0"
