"""Engine timing profiles: plain data, loaded from JSON.

A profile is the whole difference between "a fast toy server for tests" and "an
8xH20 DeepSeek-R1 deployment": the same batching model runs both, only these
numbers change. Keeping them in data files means a new deployment is fitted and
added without touching code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from launcher.errors import LauncherError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SCHEDULES = ("mixed", "prefill-first")
KV_ALLOCATIONS = ("reserve", "lazy", "ratio")
TIMED_FIELDS = ("base_ms", "decode_seq_ms", "prefill_token_ms", "prefill_step_ms", "decode_ctx_ms",
                "decode_doubling_ms", "eager_step_ms")


class ProfileError(LauncherError, ValueError):
    """A profile could not be found or is invalid; the message names the fix."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Cost model and capacity of one simulated deployment.

    Step duration (``launcher.sim.timing``) = ``base_ms``
    + ``decode_seq_ms`` x (decoding sequences, padded to a ``graph_batch_sizes`` entry) ^ ``decode_seq_exp``
    + ``decode_doubling_ms`` x log2(that batch / ``decode_knee``) above the knee
    + ``decode_ctx_ms`` x thousands of KV tokens the decoders attend over
    + ``eager_step_ms`` when the step runs without a CUDA graph
    + ``prefill_token_ms`` x (prompt tokens processed in the step ^ ``prefill_token_exp``)
    + ``prefill_step_ms`` when the step processes any prompt tokens.
    An exponent below 1 models GPUs whose decode step grows sub-linearly with the
    batch (memory-bound kernels): SGLang's TPOT in the field report.

    ``schedule`` chooses how prefill and decode share a step: ``mixed`` puts every
    running decode and prompt chunks up to the token budget in one step (vLLM V1
    style); ``prefill-first`` runs a prefill-only step whenever prompts are waiting
    and decode-only steps otherwise (vLLM V0 without chunked prefill, SGLang).
    """

    name: str
    base_ms: float
    decode_seq_ms: float
    prefill_token_ms: float
    prefill_step_ms: float = 0.0
    decode_seq_exp: float = 1.0
    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    kv_tokens: int = 1_000_000
    schedule: str = "mixed"
    chunked_prefill: bool = True
    natural_len_median: float = 0.0
    natural_len_sigma: float = 0.0
    kv_allocation: str = "reserve"
    # a reasoning model: this share of each chat output streams as reasoning, then the answer
    reasoning_fraction: float = 0.0
    decode_ctx_ms: float = 0.0
    decode_doubling_ms: float = 0.0
    decode_knee: float = 1.0
    prefill_token_exp: float = 1.0
    graph_batch_sizes: tuple[int, ...] = ()
    eager_step_ms: float = 0.0
    # kv_allocation "ratio" (SGLang's admission): a running request is charged this share of
    # the output it may still produce, decaying per decode step from init to min over
    # decay_steps; SGLang's defaults
    new_token_ratio_init: float = 0.7
    new_token_ratio_min: float = 0.098
    new_token_ratio_decay_steps: int = 600
    # the most prompt tokens the running requests may hold together (0 = no such limit): the
    # field report's vLLM starts one step budget of prompts (16,384 tokens) in a burst and the
    # rest wait until running ones finish, in both in/out settings (docs/sim.md)
    running_prompt_tokens: int = 0
    # KV is allocated in blocks of this many tokens (a partly filled block counts whole), as
    # vLLM's paged cache does; 1 = per token. Only "lazy" and "ratio" grow KV during a request
    kv_block_tokens: int = 1
    # vLLM V1 hands a request this many extra blocks whenever it gives it new ones (as far as
    # free blocks allow; its num_preallocate_tokens = 64), so a request holds up to that much
    # KV it has not used yet; admission and growth still need only the blocks they fill
    kv_preallocate_blocks: int = 0
    tensor_parallel: int = 1  # the GPUs of the deployment it emulates (launch metadata: cost per GPU-hour)
    # the real server's command-line flags this profile stands for, as typed (e.g. "--enforce-eager"):
    # launch metadata for the comparability checks, parsed like a recorded server command line
    engine_args: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        problems = []
        for key in TIMED_FIELDS:
            if getattr(self, key) < 0:
                problems.append(f"{key} must be >= 0")
        sizes = self.graph_batch_sizes
        if isinstance(sizes, list):  # from JSON
            object.__setattr__(self, "graph_batch_sizes", sizes := tuple(sizes))
        if not isinstance(sizes, tuple) or not all(isinstance(b, int) and b >= 1 for b in sizes):
            problems.append("graph_batch_sizes must be a list of batch sizes >= 1")
        args = self.engine_args
        if isinstance(args, list):  # from JSON
            object.__setattr__(self, "engine_args", args := tuple(args))
        if not isinstance(args, tuple) or not all(isinstance(a, str) for a in args):
            problems.append('engine_args must be a list of command-line strings, e.g. ["--max-num-seqs", "256"]')
        for key in ("max_num_seqs", "max_batched_tokens", "kv_tokens"):
            if int(getattr(self, key)) < 1:
                problems.append(f"{key} must be >= 1")
        for key in ("decode_seq_exp", "prefill_token_exp"):
            if not 0.0 < getattr(self, key) <= 2.0:
                problems.append(f"{key} must be within (0, 2]")
        if not 0.0 <= self.new_token_ratio_min <= self.new_token_ratio_init <= 1.0:
            problems.append("new_token_ratio_min <= new_token_ratio_init must both be within [0, 1]")
        if self.new_token_ratio_decay_steps < 1:
            problems.append("new_token_ratio_decay_steps must be >= 1")
        if self.running_prompt_tokens < 0:
            problems.append("running_prompt_tokens must be >= 0 (0 = no limit)")
        if self.kv_block_tokens < 1:
            problems.append("kv_block_tokens must be >= 1 (1 = per token)")
        if self.kv_preallocate_blocks < 0:
            problems.append("kv_preallocate_blocks must be >= 0")
        if self.decode_knee < 1:
            problems.append("decode_knee must be >= 1")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.kv_allocation not in KV_ALLOCATIONS:
            problems.append(f"kv_allocation must be one of {', '.join(KV_ALLOCATIONS)}")
        if not 0.0 <= self.reasoning_fraction <= 1.0:
            problems.append("reasoning_fraction must be within [0, 1]")
        if self.natural_len_median < 0 or self.natural_len_sigma < 0:
            problems.append("natural_len_median and natural_len_sigma must be >= 0")
        if problems:
            raise ProfileError(f"profile '{self.name}': " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def replace(self, **changes: Any) -> Profile:
        data = asdict(self)
        data.update(changes)
        return Profile(**data)

    def scaled(self, factor: float) -> Profile:
        """The same deployment running ``factor`` times faster: every cost divided by it.

        Step, prefill and therefore TTFT and TPOT all shrink by the factor while the
        capacities (slots, budgets, KV) stay, so queueing behaves as at full scale,
        in less wall time: a fitted profile's sweep finishes in minutes.
        """
        if not (factor > 0 and math.isfinite(factor)):
            raise ProfileError(f"time scale must be a positive number, got {factor}")
        if factor == 1.0:
            return self
        return self.replace(**{key: getattr(self, key) / factor for key in TIMED_FIELDS})


def available_profiles() -> list[str]:
    """Names of the profiles shipped with the package."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


def profile_from_dict(data: dict[str, Any], name: str) -> Profile:
    known = {f.name for f in fields(Profile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ProfileError(
            f"profile '{name}': unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    data = {"name": name, **data}
    try:
        return Profile(**data)
    except TypeError as exc:
        raise ProfileError(f"profile '{name}': {exc}") from None


def load_profile(name_or_path: str) -> Profile:
    """Load a shipped profile by name, or any profile JSON file by path."""
    path = Path(name_or_path).expanduser()
    if not (path.suffix == ".json" and path.is_file()):
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ProfileError(
            f"unknown profile '{name_or_path}': use one of {', '.join(available_profiles())} "
            f"or the path of a profile .json file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"cannot read profile '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile '{path}' must be a JSON object")
    return profile_from_dict(data, data.pop("name", path.stem))
