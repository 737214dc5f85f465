"""What prompts to build: the one value the CLI hands to the workload layer."""

from __future__ import annotations

from dataclasses import dataclass

# The prompt sources loadgen.workload can build (the --dataset-name choices).
DATASETS = ("random", "sharegpt", "jsonl", "sessions", "mooncake", "azure", "burstgpt")
# The request traces among them: replayed at their own times (loadgen.workload.traces).
TRACE_DATASETS = ("mooncake", "azure", "burstgpt")


@dataclass(frozen=True)
class SessionSpec:
    """Synthetic multi-turn sessions (``--dataset-name sessions``); each field is a value or
    a distribution (:mod:`loadgen.workload.dist`). ``user_len``/``output_len`` of None take
    ``--input-len``/``--output-len``."""

    turns: str = "4"
    user_len: str | None = None
    output_len: str | None = None
    system_len: str = "0"
    think_s: str = "0"
    history: str = "live"  # live | recorded


@dataclass(frozen=True)
class WorkloadSpec:
    """A prompt set, fully determined by these fields (they key the on-disk cache).

    ``chat`` selects messages (OpenAI chat) instead of raw text. ``input_len_counts``
    is ``"total"`` (chat template included, the default) or ``"content"``.
    """

    dataset: str = "random"  # random | sharegpt | jsonl
    num_prompts: int = 1000
    input_len: int = 1024
    output_len: int = 128
    range_ratio: float = 0.0
    output_range_ratio: float | None = None  # None: same as range_ratio
    dataset_path: str | None = None
    output_len_fixed: bool = False  # sharegpt/jsonl: use output_len instead of the dataset's
    prefix_len: int = 0
    num_prefixes: int = 0
    chat: bool = False
    input_len_counts: str = "total"
    seed: int = 0
    tokenizer: str = "deepseek-r1"
    min_input_len: int = 4  # sharegpt filters (vLLM-like)
    max_input_len: int = 1024
    max_total_len: int = 2048
    block_size: int = 512  # traces: tokens per hash id (Mooncake's --block-size)
    session: SessionSpec | None = None  # sessions dataset
