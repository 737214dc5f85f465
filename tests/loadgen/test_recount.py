"""The background re-count of a prompt set built without its tokenizer.

A real forked process with the real DeepSeek-R1 tokenizer counts the sample; a set
whose lengths are wrong is reported, and the stored set and piece table it came from
are dropped so that the next build is checked before its first request.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from loadgen.workload import WorkloadSpec, build_prompts, check_sample, last_build, pieces
from loadgen.workload import tokenizer as tokenizer_module
from loadgen.workload.fit import view_of
from loadgen.workload.recount import Recount

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def deferred_set(tok, monkeypatch: pytest.MonkeyPatch):
    """A 600 × 128-token set built from the stored table (no tokenizer loaded), cached."""
    monkeypatch.setattr(tokenizer_module, "_LOADED", {})  # as in a fresh process
    view = view_of(tok)
    pieces.store(tok.fingerprint, view.pieces, pieces.facts_of(view, view.pieces))
    prompts = build_prompts(WorkloadSpec(num_prompts=600, input_len=128, seed=5), defer_check=True)
    assert last_build.deferred and last_build.cache_file is not None and last_build.cache_file.exists()
    return prompts, last_build.fingerprint, last_build.cache_file


def test_a_correct_set_is_counted_ok(deferred_set) -> None:
    prompts, fingerprint, cache_file = deferred_set
    recount = Recount("deepseek-r1", prompts, fingerprint=fingerprint, cache_file=cache_file)
    # it only gets the CPU when the client leaves it idle (loading the tokenizer takes far longer than this)
    assert os.sched_getscheduler(recount._pid) == os.SCHED_IDLE
    verdict = recount.verdict(timeout_s=120)
    assert verdict.done and verdict.ok, verdict
    assert verdict.checked == len(check_sample(prompts)) < len(prompts)  # a sample spread over the set
    assert verdict.as_dict() == {"checked": verdict.checked, "ok": True, "background": True}
    assert cache_file.exists()


def test_a_wrong_length_is_reported_and_the_stored_set_and_table_dropped(deferred_set, tmp_path: Path) -> None:
    prompts, fingerprint, cache_file = deferred_set
    wrong_id = check_sample(prompts)[3].id
    prompts = [dataclasses.replace(p, input_len=p.input_len + 2) if p.id == wrong_id else p for p in prompts]
    verdict = Recount("deepseek-r1", prompts, fingerprint=fingerprint, cache_file=cache_file).verdict(timeout_s=120)
    assert verdict.done and not verdict.ok
    assert verdict.mismatched == 1 and verdict.examples == ((wrong_id, 130, 128),)
    assert f"prompt {wrong_id} was built as 130 tokens and the tokenizer counts 128" in verdict.message()
    assert not cache_file.exists() and pieces.cached(fingerprint) is None


def test_a_recount_that_cannot_load_its_tokenizer_says_why(deferred_set, tmp_path: Path) -> None:
    prompts, _, _ = deferred_set
    verdict = Recount(str(tmp_path / "nowhere"), prompts).verdict(timeout_s=60)
    assert not verdict.done and "not a local directory" in verdict.error
    assert verdict.as_dict()["done"] is False
