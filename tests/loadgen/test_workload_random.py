"""Random prompts: exact lengths as the real DeepSeek-R1 tokenizer counts them.

Every length here is re-counted through transformers' public API (``encode`` for
text, ``apply_chat_template(tokenize=True)`` for chat; the ``hf`` fixture), which is
independent of loadgen's own tokenizer and of the fast paths that built the prompts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import loadgen.workload as workload
from loadgen.workload import WorkloadError, WorkloadSpec, build_prompts, check_lengths, pieces
from loadgen.workload import tokenizer as tokenizer_module
from loadgen.workload.fit import TokenizerView, window_safe
from loadgen.workload.lengths import length_bounds
from loadgen.workload.pieces import PieceTable
from loadgen.workload.random_prompts import build_random
from loadgen.workload.tokenizer import bundled_tokenizer_dir, load_tokenizer
from tests.conftest import load_hf_tokenizer, tokenizer_with_template

EXACT_NS = [1, 2, 16, 128, 256, 1024, 4096]


def _count(n: int) -> int:
    """Prompts per length: plenty for short ones, a few for long ones (time budget)."""
    return 40 if n <= 256 else (12 if n <= 1024 else 3)


# ``private_cache`` and ``tok`` come from conftest.py.
pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def view(tok):
    return TokenizerView(tok)


def _content_ids(tok, p) -> list[int]:
    text = p.text if p.messages is None else p.messages[-1]["content"]
    return tok.encode(text, add_special_tokens=False)


def _build(view, spec: WorkloadSpec, method: str):
    """``pieces`` through the public entry point (it is what R1 gets); ``window`` directly."""
    if method == "pieces":
        prompts = build_prompts(spec, view.tok, use_cache=False)
        # exact by construction, not rescued by the re-count fallback
        assert workload.last_build.fitter == "pieces" and not workload.last_build.rebuilt
        return prompts
    return build_random(view, spec, method=method)


@pytest.mark.parametrize("method", ["pieces", "window"])
@pytest.mark.parametrize("n", EXACT_NS)
def test_completions_prompts_are_exact(view, hf, n: int, method: str) -> None:
    spec = WorkloadSpec(num_prompts=_count(n), input_len=n, output_len=8, seed=n)
    prompts = _build(view, spec, method)
    assert len(prompts) == spec.num_prompts
    assert [p.id for p in prompts] == list(range(spec.num_prompts))
    for p in prompts:
        assert p.messages is None and p.input_len == n
        assert len(hf.encode(p.text)) == n, p.id
        ids = _content_ids(hf, p)
        assert all(3 <= i < 128000 for i in ids), "only ordinary vocabulary"


@pytest.mark.parametrize("method", ["pieces", "window"])
@pytest.mark.parametrize("n", [n for n in EXACT_NS if n >= 4])
def test_chat_prompts_are_exact_including_the_template(view, hf, n: int, method: str) -> None:
    spec = WorkloadSpec(num_prompts=_count(n), input_len=n, output_len=8, chat=True, seed=n)
    prompts = _build(view, spec, method)
    for p in prompts:
        assert p.text is None and p.messages[0]["role"] == "user"
        full = hf.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert len(full) == n == p.input_len
    assert check_lengths(hf, prompts) == []


def test_piece_table_joins_re_encode_to_themselves(view, hf) -> None:
    """The table's promise, checked with transformers on joins the table never saw."""
    table = view.pieces
    assert table is not None and table.size > 10_000
    assert all(t[0] == " " and not any(c.isspace() for c in t[1:]) for t in table.texts.tolist())
    single = [hf.encode(t, add_special_tokens=False) for t in table.texts[:: max(1, table.size // 2000)].tolist()]
    assert single == [[i] for i in table.ids[:: max(1, table.size // 2000)].tolist()]
    import numpy as np

    rng = np.random.default_rng(2024)
    for _ in range(4):
        index = rng.integers(0, table.size, size=8192)
        assert hf.encode(table.join(index), add_special_tokens=False) == table.ids[index].tolist()


def test_piece_table_is_cached_by_tokenizer_hash(tok, tmp_path: Path) -> None:
    view = TokenizerView(tok)
    first = view.pieces
    (table_file,) = (tmp_path / "cache" / "tokenizers").glob("pieces-*.json")
    assert tok.fingerprint in table_file.name
    stored = json.loads(table_file.read_text())
    assert stored["ids"] == first.ids.tolist() and stored["texts"] == first.texts.tolist()
    # what a build adds on top of the pieces, as the tokenizer itself counts it
    assert stored["facts"] == {"bos": view.bos, "chat_overhead": view.frame.overhead}
    stored["ids"], stored["texts"] = stored["ids"][:300], stored["texts"][:300]
    table_file.write_text(json.dumps(stored))  # a later view reads the file instead of recomputing
    again = TokenizerView(tok).pieces
    assert again.ids.tolist() == stored["ids"] and again.texts.tolist() == first.texts[:300].tolist()
    table_file.write_text(json.dumps({**stored, "texts": stored["texts"][:299]}))  # ragged: rebuilt
    assert TokenizerView(tok).pieces.ids.tolist() == first.ids.tolist()


@pytest.mark.parametrize("spec", [
    WorkloadSpec(num_prompts=300, input_len=128, range_ratio=0.5, seed=11),
    WorkloadSpec(num_prompts=200, input_len=64, chat=True, prefix_len=16, num_prefixes=3, seed=12),
    WorkloadSpec(num_prompts=100, input_len=32, chat=True, input_len_counts="content", seed=13),
], ids=["text", "chat-prefixes", "chat-content"])
def test_a_set_from_the_stored_table_needs_no_tokenizer(tok, view, hf, spec: WorkloadSpec,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the table stored, a deferred-check build loads no tokenizer and makes the same
    set, byte for byte, as the build that loads it, exact as transformers counts it."""
    pieces.store(tok.fingerprint, view.pieces, pieces.facts_of(view, view.pieces))
    with_tokenizer = build_prompts(spec, tok, use_cache=False)
    assert workload.last_build.checked and not workload.last_build.deferred

    def no_tokenizer(_name: str) -> None:
        raise AssertionError("the tokenizer was loaded")

    monkeypatch.setattr(tokenizer_module, "_LOADED", {})  # as in a fresh process
    monkeypatch.setattr(workload, "load_tokenizer", no_tokenizer)
    lean = build_prompts(spec, use_cache=False, defer_check=True)
    assert workload.last_build.deferred and workload.last_build.fitter == "pieces"
    assert workload.last_build.checked is None
    assert [(p.input_len, p.output_len, p.text, p.messages) for p in lean] == \
        [(p.input_len, p.output_len, p.text, p.messages) for p in with_tokenizer]
    assert check_lengths(hf, lean) == []


def test_a_deferred_build_uses_a_loaded_tokenizer_or_loads_one_without_a_stored_table(
        tok, view, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = WorkloadSpec(num_prompts=50, input_len=64, seed=14)
    pieces.store(tok.fingerprint, view.pieces, pieces.facts_of(view, view.pieces))
    build_prompts(spec, use_cache=False, defer_check=True)  # loaded here already: counted now, for the encode only
    assert not workload.last_build.deferred and workload.last_build.checked == 50
    loads = []
    monkeypatch.setattr(tokenizer_module, "_LOADED", {})
    monkeypatch.setattr(workload, "load_tokenizer", lambda name: loads.append(name) or tok)
    pieces.forget(tok.fingerprint)
    build_prompts(spec, use_cache=False, defer_check=True)  # no table yet: the tokenizer is loaded after all
    assert not workload.last_build.deferred and workload.last_build.checked == 50 and loads == ["deepseek-r1"]


def test_a_wrong_piece_table_is_caught_and_rebuilt(tok, hf, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces without their leading space merge when joined: the re-count catches it."""
    from loadgen.workload.fit import view_of

    view = view_of(tok)
    bad = [i for i, t in zip(view.pieces.ids.tolist(), view.pieces.texts.tolist(), strict=True) if t[1:].isalpha()][:500]
    texts = [view.decode([i])[1:] for i in bad]
    monkeypatch.setattr(view, "_pieces", PieceTable.of(bad, texts))
    spec = WorkloadSpec(num_prompts=6, input_len=64, seed=3)
    prompts = build_prompts(spec, tok, use_cache=False)
    assert workload.last_build.rebuilt and workload.last_build.fitter == "loop"
    assert check_lengths(hf, prompts) == [] and {p.input_len for p in prompts} == {64}


@pytest.mark.parametrize("n", [1, 2, 16, 1024])
def test_chat_content_mode_counts_the_message_only(tok, hf, n: int) -> None:
    spec = WorkloadSpec(num_prompts=_count(n), input_len=n, chat=True, input_len_counts="content", seed=7)
    prompts = build_prompts(spec, tok, use_cache=False)
    assert not workload.last_build.rebuilt
    for p in prompts:
        assert len(_content_ids(hf, p)) == n
        # input_len stays the server's count, so verification still compares like with like
        full = hf.apply_chat_template(p.messages, tokenize=True, add_generation_prompt=True, return_dict=False)
        assert p.input_len == len(full) == n + 3


@pytest.mark.parametrize("n", [1, 2, 3])
def test_chat_total_shorter_than_template_is_a_clear_error(tok, n: int) -> None:
    spec = WorkloadSpec(num_prompts=2, input_len=n, chat=True)
    with pytest.raises(WorkloadError) as err:
        build_prompts(spec, tok, use_cache=False)
    msg = str(err.value)
    assert "\n" not in msg and "chat template adds 3" in msg and "at least 4" in msg


def test_every_prompt_starts_differently(tok, hf) -> None:
    prompts = build_prompts(WorkloadSpec(num_prompts=300, input_len=16, seed=3), tok, use_cache=False)
    starts = {tuple(_content_ids(hf, p)[:2]) for p in prompts}
    assert len(starts) == len(prompts)
    assert len({p.text for p in prompts}) == len(prompts)


def test_single_token_prompts_are_all_different(tok, hf) -> None:
    prompts = build_prompts(WorkloadSpec(num_prompts=500, input_len=1, seed=11), tok, use_cache=False)
    assert len({tuple(_content_ids(hf, p)) for p in prompts}) == 500


def test_large_set_of_short_prompts_is_exact_and_unique(tok, hf) -> None:
    """Many prompts from one random stream: starts stay unique, a spread sample is exact."""
    spec = WorkloadSpec(num_prompts=50_000, input_len=16, range_ratio=0.5, seed=21)
    prompts = build_prompts(spec, tok, use_cache=False)
    assert workload.last_build.fitter == "pieces" and not workload.last_build.rebuilt
    # pieces are " " + non-space text, so the words are the first four tokens
    assert len({tuple(p.text.split(" ")[1:5]) for p in prompts}) == len(prompts)
    assert check_lengths(hf, prompts, sample=500) == []


def test_same_seed_same_prompts_other_seed_other_prompts(tok) -> None:
    spec = WorkloadSpec(num_prompts=20, input_len=64, range_ratio=0.5, seed=5)
    a = build_prompts(spec, tok, use_cache=False)
    b = build_prompts(spec, tok, use_cache=False)
    c = build_prompts(WorkloadSpec(num_prompts=20, input_len=64, range_ratio=0.5, seed=6), tok, use_cache=False)
    assert a == b
    assert all(x.text != y.text for x, y in zip(a, c, strict=True))


def test_pool_and_single_process_build_the_same_set(view) -> None:
    spec = WorkloadSpec(num_prompts=24, input_len=200, range_ratio=0.3, seed=9)
    alone = build_random(view, spec, workers=0, method="window")
    pooled = build_random(view, spec, workers=2, method="window")
    assert alone == pooled


def test_range_ratio_uses_vllm_bounds(tok, hf) -> None:
    assert length_bounds(100, 0.5) == (50, 150)
    assert length_bounds(128, 0.25) == (96, 160)
    spec = WorkloadSpec(num_prompts=200, input_len=100, output_len=40, range_ratio=0.5, output_range_ratio=0.25, seed=1)
    prompts = build_prompts(spec, tok, use_cache=False)
    ins = [p.input_len for p in prompts]
    outs = [p.output_len for p in prompts]
    assert 50 <= min(ins) < 60 and 140 < max(ins) <= 150
    assert 30 <= min(outs) and max(outs) <= 50 and len(set(outs)) > 5
    assert check_lengths(hf, prompts) == []


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_range_ratio_outside_vllm_range_is_rejected(tok, ratio: float) -> None:
    with pytest.raises(WorkloadError, match=r"outside \[0, 1\)"):
        build_prompts(WorkloadSpec(num_prompts=2, input_len=64, range_ratio=ratio), tok, use_cache=False)


@pytest.mark.parametrize("method", ["pieces", "window"])
@pytest.mark.parametrize("chat", [False, True])
def test_shared_prefixes_share_exactly_k_tokens(view, hf, chat: bool, method: str) -> None:
    k, groups, n = 32, 3, 96
    spec = WorkloadSpec(num_prompts=30, input_len=n, prefix_len=k, num_prefixes=groups, chat=chat, seed=2)
    prompts = _build(view, spec, method)
    assert check_lengths(hf, prompts) == []
    assert all(p.input_len == n for p in prompts)
    ids = [_content_ids(hf, p) for p in prompts]
    for g in range(groups):
        members = [ids[i] for i in range(len(ids)) if i % groups == g]
        head = members[0][:k]
        assert all(m[:k] == head for m in members)
        assert len({m[k] for m in members}) == len(members), "the prefix must be exactly K tokens, no more"
    heads = {tuple(ids[g][:k]) for g in range(groups)}
    assert len(heads) == groups and len({h[0] for h in heads}) == groups


def test_prefix_longer_than_prompt_is_rejected(tok) -> None:
    spec = WorkloadSpec(num_prompts=4, input_len=16, prefix_len=16, num_prefixes=1)
    with pytest.raises(WorkloadError, match="beyond the 16-token shared prefix"):
        build_prompts(spec, tok, use_cache=False)


def test_classic_fitter_is_exact_too(view, hf) -> None:
    """The fallback used for tokenizers the fast cut cannot be trusted with."""
    for chat in (False, True):
        spec = WorkloadSpec(num_prompts=8, input_len=300, chat=chat, seed=4)
        prompts = build_random(view, spec, general=True, workers=0)
        assert check_lengths(hf, prompts) == []
        assert all(p.input_len == 300 for p in prompts)


def test_template_without_special_token_fences_is_fitted_whole(tmp_path: Path) -> None:
    """A ChatML-like template in plain text: tokens can merge across the template
    boundary, so every prompt's whole templated length is fitted and counted."""
    folder = tokenizer_with_template(
        tmp_path / "chatml-tok",
        "{% for m in messages %}user:\n{{ m['content'] }}\nend\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}",
    )
    plain = load_tokenizer(str(folder))
    view = TokenizerView(plain)
    assert not view.frame.isolated
    spec = WorkloadSpec(num_prompts=10, input_len=64, chat=True, tokenizer=str(folder), seed=1)
    prompts = build_prompts(spec, plain, use_cache=False)
    assert workload.last_build.fitter == "window" and not workload.last_build.rebuilt
    assert check_lengths(load_hf_tokenizer(str(folder)), prompts) == []
    assert all(p.input_len == 64 for p in prompts)


def test_window_safety_is_decided_from_the_tokenizer_config(view) -> None:
    assert view.window  # DeepSeek-R1: regex splits + byte level, no normalizer
    gpt2 = {"normalizer": None, "model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False}}
    assert window_safe(gpt2)
    assert not window_safe({**gpt2, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}})
    assert not window_safe({**gpt2, "pre_tokenizer": {"type": "Metaspace"}})
    assert not window_safe({**gpt2, "normalizer": {"type": "NFKC"}})
    behind = {"type": "Split", "pattern": {"Regex": "(?<=a)b"}, "behavior": "Isolated", "invert": False}
    assert not window_safe({**gpt2, "pre_tokenizer": behind})
    anchored = {**behind, "pattern": {"Regex": "^\\s+"}}
    assert not window_safe({**gpt2, "pre_tokenizer": anchored})
    in_class = {**behind, "pattern": {"Regex": "[^\\r\\n$^]+|\\s+(?!\\S)"}}
    assert window_safe({**gpt2, "pre_tokenizer": in_class})


def test_cache_serves_the_second_build(tok, tmp_path: Path) -> None:
    spec = WorkloadSpec(num_prompts=50, input_len=128, seed=12)
    first = build_prompts(spec, tok)
    files = list((tmp_path / "cache" / "prompts").glob("random-*.jsonl"))
    assert len(files) == 1
    second = build_prompts(spec, tok)
    assert workload.last_build.source == "cache"  # read, not built (how fast: perf/, not here)
    assert second == first
    other = build_prompts(WorkloadSpec(num_prompts=50, input_len=129, seed=12), tok)
    assert other[0].input_len == 129
    assert len(list((tmp_path / "cache" / "prompts").glob("random-*.jsonl"))) == 2


def test_corrupt_cache_file_is_rebuilt(tok, tmp_path: Path) -> None:
    spec = WorkloadSpec(num_prompts=5, input_len=32, seed=1)
    first = build_prompts(spec, tok)
    (path,) = (tmp_path / "cache" / "prompts").glob("random-*.jsonl")
    path.write_bytes(path.read_bytes()[:-40])
    assert build_prompts(spec, tok) == first


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"dataset": "nope"}, "unknown dataset 'nope'"),
        ({"num_prompts": 0}, "--num-prompts"),
        ({"input_len": 0}, "--input-len"),
        ({"output_len": 0}, "--output-len"),
        ({"input_len_counts": "words"}, "--input-len-counts"),
        ({"num_prefixes": 2}, "--num-prefixes needs --prefix-len"),
        ({"dataset": "sharegpt"}, "--dataset-path"),
    ],
)
def test_bad_specs_fail_with_one_line(changes: dict, needle: str) -> None:
    with pytest.raises(WorkloadError) as err:
        build_prompts(WorkloadSpec(**changes))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_tokenizer_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(WorkloadError) as err:
        build_prompts(WorkloadSpec(tokenizer=str(tmp_path / "nowhere")))
    assert "never downloads" in str(err.value) and "--tokenizer" in str(err.value)


def test_cache_key_changes_with_the_tokenizer_files(tok, tmp_path: Path) -> None:
    spec = WorkloadSpec(num_prompts=3, input_len=16, seed=1)
    build_prompts(spec, tok)
    folder = tmp_path / "copy"
    folder.mkdir()
    src = bundled_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((src / name).read_bytes())
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    config["model_max_length"] = 1234
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    build_prompts(WorkloadSpec(num_prompts=3, input_len=16, seed=1, tokenizer=str(folder)))
    assert len(os.listdir(tmp_path / "cache" / "prompts")) == 2


@pytest.fixture(scope="module")
def prepend_tok(tmp_path_factory: pytest.TempPathFactory):
    """R1 with a normalizer that prepends a marker to every text (and a decoder that drops
    it), as SentencePiece-style tokenizers do: a cut-out run of tokens no longer encodes
    to itself, so only the decode/re-encode loop is exact."""
    src = bundled_tokenizer_dir()
    folder = tmp_path_factory.mktemp("prepend-tok")
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    spec["normalizer"] = {"type": "Prepend", "prepend": "\u2581"}
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [spec["decoder"], {"type": "Replace", "pattern": {"String": "\u2581"}, "content": ""}],
    }
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_bytes((src / "tokenizer_config.json").read_bytes())
    return str(folder), load_tokenizer(str(folder))


def test_tokenizer_with_a_normalizer_uses_the_loop(prepend_tok) -> None:
    path, ptok = prepend_tok
    assert not TokenizerView(ptok).window and TokenizerView(ptok).pieces is None
    spec = WorkloadSpec(num_prompts=12, input_len=128, tokenizer=path, seed=1)
    prompts = build_prompts(spec, ptok, use_cache=False)
    assert workload.last_build.fitter == "loop" and not workload.last_build.rebuilt
    assert check_lengths(load_hf_tokenizer(path), prompts) == [] and {p.input_len for p in prompts} == {128}


def test_a_wrongly_trusted_fast_cut_is_caught_and_rebuilt(prepend_tok, monkeypatch: pytest.MonkeyPatch) -> None:
    from loadgen.workload.fit import view_of

    path, ptok = prepend_tok
    monkeypatch.setattr(view_of(ptok), "window", True)  # pretend the cut were safe
    monkeypatch.setattr(view_of(ptok), "_pieces_known", True)  # and there were no piece table
    spec = WorkloadSpec(num_prompts=12, input_len=128, tokenizer=path, seed=2)
    prompts = build_prompts(spec, ptok, use_cache=False)
    assert workload.last_build.rebuilt and workload.last_build.fitter == "loop"
    assert check_lengths(load_hf_tokenizer(path), prompts) == [] and {p.input_len for p in prompts} == {128}


@pytest.mark.parametrize("chat", [False, True])
def test_a_tokenizer_that_adds_bos_gets_exact_prompts(tmp_path: Path, chat: bool) -> None:
    from tests.loadgen.conftest import BOS_POST_PROCESSOR, copy_tokenizer

    folder = copy_tokenizer(tmp_path, "bos-tok", post_processor=BOS_POST_PROCESSOR)
    spec = WorkloadSpec(num_prompts=10, input_len=50, chat=chat, tokenizer=str(folder), seed=4)
    prompts = build_prompts(spec, use_cache=False)
    assert workload.last_build.fitter == "pieces" and not workload.last_build.rebuilt
    hf_bos = load_hf_tokenizer(str(folder))
    assert check_lengths(hf_bos, prompts) == [] and {p.input_len for p in prompts} == {50}
