"""Helpers shared by this folder's tests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from loadgen.cli import config_from_options, explicit_options, main
from loadgen.client import LiveCounters, StreamClient, Target
from loadgen.config import RunConfig
from loadgen.records import Prompt, RequestRecord
from loadgen.workload.tokenizer import bundled_tokenizer_dir


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def results_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def write_profile(folder: Path, **values: float) -> Path:
    """A sim timing profile where every step lasts exactly ``base_ms``."""
    profile = {"base_ms": 20.0, "decode_seq_ms": 0.0, "prefill_token_ms": 0.0, "prefill_step_ms": 0.0,
               "max_num_seqs": 64, "max_batched_tokens": 65536, "kv_tokens": 10_000_000, **values}
    path = folder / "steady.json"
    path.write_text(json.dumps(profile))
    return path


def parsed(args: list[str]) -> RunConfig:
    """The configuration the ``loadgen`` command builds from ``args`` (no run)."""
    ctx = main.make_context("loadgen", list(args))
    return config_from_options(ctx.params, explicit_options(ctx))


def server_json(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
        return json.loads(resp.read())


def prompt(i: int = 0, out: int = 8, chat: bool = False) -> Prompt:
    if chat:
        return Prompt(i, 4, out, messages=[{"role": "user", "content": f"id={i} hi"}])
    return Prompt(i, 4, out, text=f"id={i} hello")


def send_all(target: Target, prompts: list[Prompt], *, limit: int = 8,
             counters: LiveCounters | None = None, **client_kw) -> list[RequestRecord]:
    """Send prompts through one StreamClient, at most ``limit`` at a time."""

    async def main() -> list[RequestRecord]:
        client = StreamClient(target, counters=counters, **client_kw)
        gate = asyncio.Semaphore(limit)

        async def one(p: Prompt) -> RequestRecord:
            async with gate:
                rec = RequestRecord(p.id, p.input_len, p.output_len)
                return await client.request(rec, client.build_body(p))

        try:
            return await asyncio.wait_for(asyncio.gather(*(one(p) for p in prompts)), 60)
        finally:
            await client.close()

    return asyncio.run(main())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def shared_leading(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


BOS_POST_PROCESSOR = {
    "type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<｜begin▁of▁sentence｜>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<｜begin▁of▁sentence｜>": {"id": "<｜begin▁of▁sentence｜>", "ids": [0],
                                                   "tokens": ["<｜begin▁of▁sentence｜>"]}},
}


def copy_tokenizer(tmp_path: Path, name: str, post_processor: dict | None = None, **config_changes) -> Path:
    src = bundled_tokenizer_dir()
    folder = tmp_path / name
    folder.mkdir()
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if post_processor is not None:
        spec["post_processor"] = post_processor
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = json.loads((src / "tokenizer_config.json").read_text(encoding="utf-8"))
    for key, value in config_changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    return folder


def schedule_drift(intended_ms, sent_ms) -> float:
    """How far the sends drifted from their schedule, as a share of its length.

    The median lateness of the last quarter of the sends (in schedule order) minus that of the
    first quarter, over the time between them: a client that keeps its schedule stays at 0, one
    whose releases fall behind a little more each time shows its rate error (0.01: 1 % slow).
    A medians' difference, so one stall of the machine (a few hundred late sends, caught up) does
    not move it, while a client falling behind for a whole quarter does.
    """
    import numpy as np

    intended = np.asarray(intended_ms, dtype=float)
    order = np.argsort(intended, kind="stable")
    intended, late = intended[order], (np.asarray(sent_ms, dtype=float) - np.asarray(intended_ms, dtype=float))[order]
    q = len(intended) // 4
    span = float(np.median(intended[-q:]) - np.median(intended[:q]))
    return float(np.median(late[-q:]) - np.median(late[:q])) / span
