"""Whether a prompt set fits in this machine's memory, checked before it is built.

The prompt set is built in full before the clock starts (so nothing is tokenized
or generated on the hot path); a count the machine cannot hold would otherwise be
found out minutes later, as a MemoryError traceback or the kernel's OOM killer.
The estimate is a lower bound of what a built random prompt holds (measured on
the DeepSeek-R1 tokenizer: ~300 bytes of objects plus ~7.5 bytes of text per
token), so a run that is refused could never have fitted.
"""

from __future__ import annotations

import os

BYTES_PER_PROMPT = 300
BYTES_PER_TOKEN = 7


def prompt_bytes(count: int, input_len: int) -> int:
    """Memory a built prompt set of ``count`` prompts of ``input_len`` tokens on average holds, at least.

    The average, not the longest: ``--random-range-ratio`` draws lengths around
    ``--input-len``, and over the counts that matter here their sum is the count times it."""
    return count * (BYTES_PER_PROMPT + BYTES_PER_TOKEN * input_len)


def available_bytes() -> int | None:
    """Memory available to a new allocation (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def too_many_prompts(count: int, input_len: int, available: int | None) -> str | None:
    """The one-line reason a prompt set does not fit, or None when it may."""
    need = prompt_bytes(count, input_len)
    if available is None or need <= available:
        return None
    return (f"{count:,} prompts of {input_len:,} tokens on average need at least {need / 2**30:,.1f} GiB to build, and "
            f"this machine has {available / 2**30:,.1f} GiB available: lower --num-prompts (or the rate × --duration "
            "that sets it), or bound the run with --duration and a smaller prompt set")
