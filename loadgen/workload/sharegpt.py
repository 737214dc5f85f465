"""The ``sharegpt`` dataset: real first questions and their answers' lengths.

Format: the ``ShareGPT_V3_unfiltered_cleaned_split.json`` layout, a JSON list of
``{"id": ..., "conversations": [{"from": "human", "value": ...}, {"from": "gpt",
"value": ...}, ...]}``. The first human turn is the prompt; the turn after it is the
reply whose token count becomes the output length (unless fixed). Conversations are
shuffled with the seed and taken in that order until enough pass vLLM-like length
filters, so only as many as needed are tokenized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from loadgen.records import Prompt
from loadgen.workload.cache import readable_source
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import TokenizerView
from loadgen.workload.spec import WorkloadSpec

HUMAN = {"human", "user"}
BATCH = 256


def load_pairs(path: str) -> list[tuple[str, str]]:
    """(first human turn, the reply after it) for every usable conversation."""
    file = Path(path).expanduser()
    if not readable_source(str(file)):
        raise WorkloadError(f"ShareGPT file '{path}' not found: pass --dataset-path to a local ShareGPT JSON file")
    try:
        data = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise WorkloadError(f"'{path}' is not valid JSON ({exc}); expected a ShareGPT JSON list") from None
    if not isinstance(data, list):
        raise WorkloadError(f"'{path}' is not a ShareGPT file: expected a JSON list of conversations")
    pairs: list[tuple[str, str]] = []
    for entry in data:
        turns = entry.get("conversations") if isinstance(entry, dict) else None
        if not isinstance(turns, list):
            continue
        for i in range(len(turns) - 1):
            turn, reply = turns[i], turns[i + 1]
            if not (isinstance(turn, dict) and isinstance(reply, dict)):
                break
            if turn.get("from") in HUMAN:
                prompt, answer = turn.get("value"), reply.get("value")
                if isinstance(prompt, str) and isinstance(answer, str) and prompt.strip():
                    pairs.append((prompt, answer))
                break
    if not pairs:
        raise WorkloadError(
            f"'{path}' has no conversation with a human turn followed by a reply "
            "(expected entries like {\"conversations\": [{\"from\": \"human\", \"value\": ...}, {\"from\": \"gpt\", ...}]})"
        )
    return pairs


def keep(input_len: int, output_len: int, spec: WorkloadSpec) -> bool:
    """vLLM's ShareGPT filter with our configurable bounds."""
    if input_len < spec.min_input_len or input_len > spec.max_input_len:
        return False
    if not spec.output_len_fixed and output_len < spec.min_input_len:
        return False
    return input_len + output_len <= spec.max_total_len


def build_sharegpt(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    pairs = load_pairs(spec.dataset_path or "")
    order = np.random.default_rng([spec.seed, 5]).permutation(len(pairs))
    prompts: list[Prompt] = []
    for start in range(0, len(order), BATCH):
        chunk = [pairs[i] for i in order[start : start + BATCH]]
        replies = [] if spec.output_len_fixed else view.backend.encode_batch([a for _, a in chunk], add_special_tokens=False)
        for j, (question, _answer) in enumerate(chunk):
            # Filter on the question's own length, as vLLM does, so a chat run and a
            # completions run draw the same conversations.
            text_len = view.count_text(question)
            output_len = spec.output_len if spec.output_len_fixed else len(replies[j].ids)
            if not keep(text_len, output_len, spec):
                continue
            messages = [{"role": "user", "content": question}] if spec.chat else None
            input_len = view.count_messages(messages) if messages else text_len
            pid = len(prompts)
            if messages is None:
                prompts.append(Prompt(pid, input_len, output_len, text=question))
            else:
                prompts.append(Prompt(pid, input_len, output_len, messages=messages))
            if len(prompts) == spec.num_prompts:
                return prompts
    raise WorkloadError(
        f"only {len(prompts)} of {len(pairs)} conversations in '{spec.dataset_path}' pass the length filters "
        f"(input {spec.min_input_len}..{spec.max_input_len}, input+output <= {spec.max_total_len}) but "
        f"{spec.num_prompts} prompts were asked for: lower --num-prompts or relax the filters"
    )
