"""Our flag-data parser against the verdicts of the engines' real parsers.

Each probe line below was fed, flag by flag, to the real parser of that release;
the sets name the chunks it rejected. Our data-driven parser must reject the same
chunks and accept the rest, otherwise plans would pass here and fail at launch
(or be refused here while the engine would accept them).
"""

from __future__ import annotations

import json
import shlex

import pytest

from launcher.engines.errors import PlanError
from launcher.engines.flags import flag_files, load_flagset, parse_args, render_opt
from launcher.engines.versions import known_versions
from tests.launcher.conftest import PROBES, chunks

# The field report's vLLM flags: accepted whole by 0.7.2 and 0.8.2 (their real parsers said so).
FIELD_VLLM_FLAGS = (
    "--model /mnt/models/DeepSeek-R1 --gpu-memory-utilization 0.95 --tensor-parallel-size 8 --host 0.0.0.0 "
    "--trust-remote-code --port 8000 --max_num_seqs 256 --max-num-batched-tokens 16384 --max_model_len 4096 "
    "--max_seq_len_to_capture 16384 --tokenizer-mode auto --enable-chunked-prefill=False --enable-reasoning "
    "--reasoning-parser deepseek_r1 --enforce-eager"
)
FIELD_SGLANG_FLAGS = (
    "--model-path /mnt/models/DeepSeek-R1 --host 0.0.0.0 --port 8000 --tensor-parallel-size 8 --trust-remote-code "
    "--tokenizer-mode auto --mem-fraction-static 0.90 --context-length 65536 --quantization fp8 "
    "--reasoning-parser deepseek-r1 --chunked-prefill-size 4096"
)


@pytest.mark.parametrize("engine, version", sorted(PROBES))
def test_probe_verdicts_match_the_real_parser(engine, version):
    line, expected_rejected = PROBES[(engine, version)]
    fs = load_flagset(engine, version)
    rejected = set()
    for chunk in chunks(line):
        try:
            parse_args(fs, chunk)
        except PlanError:
            rejected.add(chunk[0])
    assert rejected == expected_rejected


@pytest.mark.parametrize("version", ["0.7.2", "0.8.2"])
def test_field_report_vllm_line_is_whole_for_old_releases(version):
    parsed = parse_args(load_flagset("vllm", version), shlex.split(FIELD_VLLM_FLAGS))
    by_name = {o.flag.name: o.value for o in parsed}
    assert by_name["--enable-chunked-prefill"] is False
    assert by_name["--max-num-seqs"] == "256"


@pytest.mark.parametrize("version", ["0.4.4.post1", "0.4.5", "0.5.23"])
def test_field_report_sglang_line_is_whole_for_every_release(version):
    parsed = parse_args(load_flagset("sglang", version), shlex.split(FIELD_SGLANG_FLAGS))
    assert {o.flag.name for o in parsed} >= {"--model-path", "--mem-fraction-static", "--reasoning-parser"}


def test_enable_chunked_prefill_false_is_spelled_per_release():
    old = load_flagset("vllm", "0.8.2")
    new = load_flagset("vllm", "0.33.0")
    assert render_opt(old.flags["--enable-chunked-prefill"], False, old) == ["--enable-chunked-prefill=False"]
    assert render_opt(new.flags["--enable-chunked-prefill"], False, new) == ["--no-enable-chunked-prefill"]
    # 0.33 accepts both off-spellings; the renderer's output must parse back to False.
    (o,) = parse_args(new, ["--no-enable-chunked-prefill"])
    assert o.value is False
    (o,) = parse_args(new, ["--disable-chunked-prefill"])
    assert o.value is False


def test_data_files_are_consistent():
    names = flag_files()
    for engine in ("vllm", "sglang"):
        versions = known_versions(engine)
        assert len(versions) >= 3
        for v in versions:
            assert f"flags-{engine}-{v}.json" in names
            fs = load_flagset(engine, v)
            assert fs.version == v and len(fs.flags) > 100
            kinds = {f.kind for f in fs.flags.values()}
            assert kinds <= {"value", "append", "flag", "bool_optional", "enable_disable", "store_boolean", "positional"}
    from launcher.engines.base import engine_data

    for engine in ("vllm", "sglang"):
        data = engine_data(engine)
        assert set(data["versions"]) == set(known_versions(engine))
        for facts in data["versions"].values():
            assert facts["readiness"] in data["readiness"]
        # Every translation rule names a flag some known release had.
        for flag in data["translations"]:
            assert any(load_flagset(engine, v).lookup(flag) for v in known_versions(engine)), flag


def test_data_files_are_compact_json():
    from importlib import resources

    for name in flag_files():
        text = resources.files("launcher.engines").joinpath("data", name).read_text()
        json.loads(text)
        assert len(text) < 60_000, name
