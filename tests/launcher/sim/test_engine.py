"""The continuous-batching model as a pure function: no sockets, no wall clock."""

from __future__ import annotations

import random

import pytest

from launcher.sim.engine import Engine, Seq, SimRequest, natural_length, simulate
from launcher.sim.profiles import Profile, ProfileError, available_profiles, load_profile


def profile(**kw) -> Profile:
    base = dict(name="t", base_ms=10.0, decode_seq_ms=1.0, prefill_token_ms=0.1, max_num_seqs=4,
                max_batched_tokens=1000, kv_tokens=100000)
    base.update(kw)
    return Profile(**base)


def test_single_request_timing_is_the_cost_formula():
    p = profile()
    (r,) = simulate(p, [SimRequest(0.0, 100, 5)])
    # prefill step: 10 ms + 100 x 0.1 ms; it yields the first token
    assert r.ttft == pytest.approx(0.020)
    # then 4 decode steps of 10 + 1 x 1 ms
    assert r.finish - r.first == pytest.approx(4 * 0.011)
    assert r.tpot == pytest.approx(0.011)


def test_slots_queue_requests_in_arrival_order():
    p = profile(max_num_seqs=2)
    res = simulate(p, [SimRequest(0.0, 10, 3) for _ in range(4)])
    # the last two wait for slots: their first token comes after the first two finish
    assert res[2].first > res[0].finish and res[3].first > res[1].finish
    assert res[0].first == res[1].first


def test_kv_budget_limits_concurrency():
    p = profile(max_num_seqs=100, kv_tokens=300)
    eng = Engine(p)
    for i in range(5):
        eng.submit(Seq(i, 50, 50, 50))
    eng.step(0.0)
    assert len(eng.running) == 3 and len(eng.waiting) == 2
    assert eng.kv_usage == pytest.approx(1.0)
    assert eng.admissible(250, 100) is not None


def test_chunked_prefill_splits_long_prompts_over_steps():
    p = profile(max_batched_tokens=256, chunked_prefill=True)
    eng = Engine(p)
    eng.submit(Seq(0, 1000, 4, 4))
    steps = 0
    emitted = []
    while not emitted:
        _, emitted = eng.step(0.0)
        steps += 1
    assert steps == 4  # 256 + 256 + 256 + 232
    p2 = profile(max_batched_tokens=256, chunked_prefill=False)
    assert Engine(p2).admissible(1000, 4) is not None


def test_mixed_schedule_keeps_decoding_during_prefill():
    mixed = profile(schedule="mixed", max_num_seqs=8)
    first = profile(schedule="prefill-first", max_num_seqs=8)
    reqs = [SimRequest(0.0, 10, 50), SimRequest(0.2, 500, 5)]
    # with prefill-first the running request pauses for the newcomer's prefill step
    gap_first = simulate(first, reqs)[0].tpot
    gap_mixed = simulate(mixed, reqs)[0].tpot
    assert gap_first > 0 and gap_mixed > 0
    assert simulate(mixed, reqs)[1].ttft < simulate(first, reqs)[1].ttft + 0.1


def test_tokens_per_step_emits_several_tokens_per_chunk():
    p = profile()
    eng = Engine(p, tokens_per_step=3)
    seq = Seq(0, 10, 10, 10)
    eng.submit(seq)
    counts = []
    while not seq.done:
        _, emitted = eng.step(0.0)
        for s in emitted:
            counts.append(s.pending)
            s.pending = 0
    assert counts == [1, 3, 3, 3]


def test_throughput_saturates_with_slots():
    p = profile(max_num_seqs=8, base_ms=20.0, decode_seq_ms=0.5)
    def tput(n):
        res = simulate(p, [SimRequest(0.0, 16, 64) for _ in range(n)])
        return sum(r.output_len for r in res) / max(r.finish for r in res)
    assert tput(8) > 3 * tput(2)
    assert tput(64) == pytest.approx(tput(32), rel=0.05)


def test_natural_length_distribution_and_cap():
    p = profile(natural_len_median=100, natural_len_sigma=0.5)
    rng = random.Random(0)
    xs = [natural_length(p, rng, 10_000) for _ in range(4000)]
    xs.sort()
    assert 90 <= xs[len(xs) // 2] <= 110
    assert all(natural_length(p, rng, 50) <= 50 for _ in range(100))
    assert natural_length(profile(), rng, 77) == 77  # median 0: never early


def test_shipped_profiles_load_and_bad_ones_are_rejected(tmp_path):
    names = available_profiles()
    assert "fast" in names
    for name in names:
        assert load_profile(name).name == name
    bad = tmp_path / "bad.json"
    bad.write_text('{"base_ms": 1, "decode_seq_ms": 1, "prefill_token_ms": 1, "bogus": 3}')
    with pytest.raises(ProfileError, match="bogus"):
        load_profile(str(bad))
    bad.write_text('{"base_ms": -1, "decode_seq_ms": 1, "prefill_token_ms": 1}')
    with pytest.raises(ProfileError, match="base_ms"):
        load_profile(str(bad))
    with pytest.raises(ProfileError, match="unknown profile"):
        load_profile("nope")


def _run_lazy(p: Profile, n: int, prompt: int, out: int, k: int = 1) -> tuple[Engine, list[Seq], float, int]:
    eng = Engine(p, k)
    seqs = [Seq(i, prompt, out, out) for i in range(n)]
    for s in seqs:
        eng.submit(s)
    t, peak = 0.0, 0
    for _ in range(100_000):
        if not eng.has_work():
            break
        dur, emitted = eng.step(t)
        t += dur
        peak = max(peak, eng.kv_used)
        for s in emitted:
            s.pending = 0
    return eng, seqs, t, peak


def test_lazy_kv_preempts_when_decodes_outgrow_the_cache_and_everyone_finishes():
    # 8 requests of 100 + 100 tokens: all 8 prompts fit (808 <= 1000), their outputs do not (1600)
    p = profile(max_num_seqs=8, kv_tokens=1000, kv_allocation="lazy")
    eng, seqs, _, peak = _run_lazy(p, 8, 100, 100)
    assert eng.preemptions > 0
    assert peak <= p.kv_tokens
    assert all(s.done and s.generated == 100 for s in seqs)
    assert eng.kv_used == 0 and not eng.running and not eng.waiting
    # recomputation is real work: the preempted ones re-ran a prefill of prompt + output so far
    assert eng.prefill_tokens_total > 8 * 100
    assert eng.prompt_tokens_total == 8 * 100  # vLLM's counter: each request's prompt once


def test_ratio_admission_charges_new_outputs_whole_and_running_ones_by_the_ratio():
    # SGLang's rule: room = free KV - ratio x outputs still to come of the running requests;
    # a new request is charged its prompt + whole output and must leave room
    p = profile(max_num_seqs=16, kv_tokens=1000, kv_allocation="ratio", new_token_ratio_init=0.5,
                new_token_ratio_min=0.5)
    eng = Engine(p)
    for i in range(8):
        eng.submit(Seq(i, 100, 100, 100))
    eng.plan()
    assert len(eng.running) == 4  # 4 x 200 = 800; a fifth would leave no room
    eng.finish()
    eng.plan()  # held 4 x 101, charged 4 x 0.5 x 99 for what they still produce: room for one more
    assert len(eng.running) == 5
    eng.finish()
    reserve = Engine(p.replace(kv_allocation="reserve"))
    for i in range(8):
        reserve.submit(Seq(i, 100, 100, 100))
    reserve.plan()
    assert len(reserve.running) == 5


def test_ratio_decays_per_decode_step_and_a_retraction_raises_it():
    p = profile(max_num_seqs=16, kv_tokens=1500, kv_allocation="ratio", new_token_ratio_init=0.5,
                new_token_ratio_min=0.1, new_token_ratio_decay_steps=10)
    eng, seqs, _, peak = _run_lazy(p, 12, 100, 100)
    assert eng.preemptions > 0  # the decayed estimate admitted more than their outputs need: retracted
    assert peak <= p.kv_tokens
    assert all(s.done and s.generated == 100 for s in seqs)
    assert eng.kv_used == 0 and not eng.running and not eng.waiting
    one = Engine(p)
    one.submit(Seq(0, 10, 50, 50))
    for _ in range(30):
        one.plan()
        one.finish()
    assert one.new_token_ratio == pytest.approx(0.1)  # floor reached after 10 decode steps, no retraction
    whole = Engine(p)  # a request as large as the whole cache still runs on an idle engine
    whole.submit(Seq(0, 500, 1000, 1000))
    whole.plan()
    assert len(whole.running) == 1


def test_lazy_kv_admits_more_than_reserve_and_reserve_never_preempts():
    lazy = profile(max_num_seqs=8, kv_tokens=1000, kv_allocation="lazy")
    reserve = lazy.replace(kv_allocation="reserve")
    eng_r, seqs_r, _, _ = _run_lazy(reserve, 8, 100, 100)
    assert eng_r.preemptions == 0 and all(s.generated == 100 for s in seqs_r)
    first_lazy = Engine(lazy)
    first_res = Engine(reserve)
    for eng in (first_lazy, first_res):
        for i in range(8):
            eng.submit(Seq(i, 100, 100, 100))
        eng.step(0.0)
    # reserve holds prompt + max_tokens per request (5 x 200); lazy only the prompts (+1)
    assert len(first_res.running) == 5 and len(first_lazy.running) == 8


def test_running_prompt_tokens_caps_the_prompts_running_together():
    # 300 prompt tokens may run together: 3 of 100 start, a fourth waits for one to finish
    p = profile(max_num_seqs=16, running_prompt_tokens=300, kv_allocation="lazy")
    eng = Engine(p)
    for i in range(6):
        eng.submit(Seq(i, 100, 3, 3))
    eng.step(0.0)
    assert len(eng.running) == 3 and len(eng.waiting) == 3
    eng.step(0.0)  # decoding, nobody finished: nobody starts
    assert len(eng.running) == 3
    for _ in range(2):  # the first three finish at their third token
        eng.step(0.0)
    assert [s.rid for s in eng.running] == [3, 4, 5]
    big = Engine(p)  # a prompt above the cap still runs on an idle engine
    big.submit(Seq(0, 500, 3, 3))
    big.step(0.0)
    assert len(big.running) == 1
    off = Engine(p.replace(running_prompt_tokens=0))  # 0: no limit
    for i in range(6):
        off.submit(Seq(i, 100, 3, 3))
    off.step(0.0)
    assert len(off.running) == 6
    with pytest.raises(ProfileError, match="running_prompt_tokens must be >= 0"):
        profile(running_prompt_tokens=-1)


def test_kv_blocks_count_whole_and_new_blocks_come_with_preallocated_ones():
    # blocks of 64 tokens, one extra block handed out with every allocation (vLLM V1)
    p = profile(max_num_seqs=8, kv_allocation="lazy", kv_tokens=640, kv_block_tokens=64, kv_preallocate_blocks=1)
    eng = Engine(p)
    eng.submit(Seq(0, 100, 200, 200))
    eng.step(0.0)  # 101 tokens take 2 blocks, plus 1 preallocated
    (seq,) = eng.running
    assert (seq.reserved, eng.kv_used) == (192, 192)
    while seq.generated < 92:  # 100 + 92 tokens still fit the 3 blocks: nothing new
        eng.step(0.0)
    assert seq.reserved == 192
    eng.step(0.0)  # the 193rd token needs a 4th block: it comes with a preallocated 5th
    assert (seq.reserved, eng.kv_used) == (320, 320)
    # admission asks only for the blocks a prompt fills; the extra block only if free
    tight = Engine(p.replace(kv_tokens=320))
    tight.submit(Seq(0, 100, 10, 10))
    tight.submit(Seq(1, 100, 10, 10))
    tight.step(0.0)
    assert [s.reserved for s in tight.running] == [192, 128]
    plain = Engine(p.replace(kv_preallocate_blocks=0))
    plain.submit(Seq(0, 100, 10, 10))
    plain.step(0.0)
    assert plain.running[0].reserved == 128
    with pytest.raises(ProfileError, match="kv_block_tokens must be >= 1"):
        profile(kv_block_tokens=0)
    with pytest.raises(ProfileError, match="kv_preallocate_blocks must be >= 0"):
        profile(kv_preallocate_blocks=-1)


def test_lazy_kv_without_pressure_matches_reserve_timing():
    lazy = profile(kv_allocation="lazy")
    reqs = [SimRequest(0.01 * i, 50, 20) for i in range(6)]
    assert simulate(lazy, reqs) == simulate(lazy.replace(kv_allocation="reserve"), reqs)


def test_unknown_kv_allocation_is_refused():
    with pytest.raises(ProfileError, match="kv_allocation must be one of reserve, lazy"):
        profile(kv_allocation="paged")
def test_time_scale_divides_every_cost_and_keeps_capacities():
    base = load_profile("vllm-0.8.2-h20x8-r1-eager")
    fast = base.scaled(10)
    assert fast.base_ms == pytest.approx(base.base_ms / 10)
    assert fast.decode_seq_ms == pytest.approx(base.decode_seq_ms / 10)
    assert fast.prefill_token_ms == pytest.approx(base.prefill_token_ms / 10)
    assert (fast.max_num_seqs, fast.kv_tokens, fast.max_batched_tokens) == (
        base.max_num_seqs, base.kv_tokens, base.max_batched_tokens)
    reqs = [SimRequest(0.0, 128, 32) for _ in range(8)]
    slow_done, fast_done = simulate(base, reqs), simulate(fast, reqs)
    for s, f in zip(slow_done, fast_done, strict=True):
        assert f.ttft == pytest.approx(s.ttft / 10) and f.tpot == pytest.approx(s.tpot / 10)
    assert base.scaled(1.0) is base
    with pytest.raises(ProfileError):
        base.scaled(0)


def test_sim_reports_its_time_scale(sim_server):
    import json
    import urllib.request

    srv = sim_server("--time-scale", "4")
    with urllib.request.urlopen(srv.base_url + "/version", timeout=10) as resp:
        assert json.loads(resp.read())["time_scale"] == 4.0
    from launcher.sim.server import parse_config

    with pytest.raises(SystemExit):
        parse_config(["--time-scale", "0"])
