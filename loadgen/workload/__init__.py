"""Prompt sources. Every source yields :class:`loadgen.records.Prompt` records."""
