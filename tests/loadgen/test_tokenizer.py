"""loadgen's lean tokenizer agrees with transformers token for token.

transformers is the reference here (a test dependency only): the same folder is loaded
by both, and ids, rendered chat prompts and decoded text must be identical.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadgen.workload.chat_template import ChatTemplateError
from loadgen.workload.tokenizer import Tokenizer, TokenizerError, load_tokenizer
from tests.conftest import REPO_ROOT, load_hf_tokenizer
from tests.loadgen.conftest import BOS_POST_PROCESSOR, copy_tokenizer

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "混合 English 和中文 text，日本語のテキストも。한국어도.",
    "emoji 🚀👍🏽👨‍👩‍👧 and flags 🇫🇷 mixed😀in words",
    "   leading spaces, trailing spaces   ",
    "tabs\tand\n\nnewlines\r\n  and   runs      of     spaces\n\n\n",
    "numbers 1234567890 3.14159 -42 1e10 0x1F",
    "code: def f(x):\n    return x ** 2  # comment\n",
    "<｜User｜>special tokens written as text<｜Assistant｜><｜end▁of▁sentence｜>",
    "",
    " ",
    "a" * 3000,
    ("A long prompt about continuous batching, KV caches and paged attention. " * 200),
    "".join(chr(c) for c in range(0x20, 0x2FF)),
]

CHATS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain paged attention."}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>easy</think>4"},
        {"role": "user", "content": "And 3+3? 请回答 🚀"},
    ],
    [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": "three\n\n  four"},
    ],
    [{"role": "user", "content": " leading space and trailing newline\n", "name": None}],
]


def test_plain_text_ids_are_identical(tok, hf) -> None:
    for text in TEXTS:
        for special in (True, False):
            assert tok.encode(text, add_special_tokens=special) == hf.encode(text, add_special_tokens=special), text
    assert tok.encode_batch(TEXTS) == [hf.encode(t) for t in TEXTS]


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_r1_chat_template_renders_and_tokenizes_identically(tok, hf, generation_prompt: bool) -> None:
    for messages in CHATS:
        ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours == theirs
        assert tok.apply_chat_template(messages, add_generation_prompt=generation_prompt) == hf.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
        )


def test_decode_vocabulary_and_token_names_agree(tok, hf) -> None:
    ids = hf.encode(TEXTS[2] + TEXTS[3] + TEXTS[8], add_special_tokens=False) + [0, 1, 128000, 128798, 128814]
    assert tok.decode(ids) == hf.decode(ids)
    assert tok.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(5) == hf.convert_ids_to_tokens(5)
    assert (len(tok), tok.vocab_size) == (len(hf), hf.vocab_size)
    assert tok.special_tokens_map == hf.special_tokens_map
    assert tok.bos_count == len(hf.encode("x")) - len(hf.encode("x", add_special_tokens=False))


@pytest.mark.parametrize(
    "changes",
    [
        {"add_bos_token": True},  # transformers 5 ignores it when tokenizer.json exists
        {"add_bos_token": True, "add_eos_token": True},
        {"post_processor": BOS_POST_PROCESSOR},  # the file's post-processor adds a BOS
        {"post_processor": BOS_POST_PROCESSOR, "add_bos_token": False},
        {"add_bos_token": None, "add_eos_token": None},  # the file's own post-processor
        {"add_bos_token": True, "bos_token": "<｜begin▁of▁sentence｜>"},  # plain-string form
        {"eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": False,
                       "normalized": False, "rstrip": False, "single_word": False}},
    ],
)
def test_bos_and_special_token_rules_follow_the_config(tmp_path: Path, changes: dict) -> None:
    folder = copy_tokenizer(tmp_path, "tok", **changes)
    ours, theirs = Tokenizer(folder), load_hf_tokenizer(str(folder))
    assert ours.bos_count == (1 if "post_processor" in changes else 0)
    for text in ("hello", TEXTS[1], ""):
        assert ours.encode(text) == theirs.encode(text), changes
    assert ours.bos_count == len(theirs.encode("x")) - len(theirs.encode("x", add_special_tokens=False))
    messages = CHATS[1]
    assert ours.apply_chat_template(messages, add_generation_prompt=True) == theirs.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=False)
    assert ours.special_tokens_map == theirs.special_tokens_map


def test_template_features_match_transformers(tmp_path: Path) -> None:
    """tojson without HTML escaping, loop controls, namespace, the generation tag,
    bos_token as a variable, raise_exception, and a chat_template.jinja that wins."""
    template = (
        "{{ bos_token }}{% set ns = namespace(n=0) %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% set ns.n = ns.n + 1 %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% else %}<{{ m['role'] }}>{{ m['content'] | tojson }}{% endif %}\n"
        "{% endfor %}{{ ns.n }}{% if add_generation_prompt %}<bot>{% endif %}"
        "{% if messages[-1]['role'] == 'system' %}{{ raise_exception('system last') }}{% endif %}"
    )
    folder = copy_tokenizer(tmp_path, "tpl")
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    ours, theirs = Tokenizer(folder), load_hf_tokenizer(str(folder))
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "a <b> & \"c\" é"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "再见"}]
    for gen in (True, False):
        rendered = ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert rendered == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert '"a <b> & \\"c\\" é"' in rendered
    with pytest.raises(ChatTemplateError, match="system last"):
        ours.apply_chat_template(messages + [{"role": "system", "content": "x"}])


def test_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(str(only_config))
    assert "no tokenizer.json" in str(err.value) and "\n" not in str(err.value)
    broken = copy_tokenizer(tmp_path, "broken")
    (broken / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="cannot read"):
        Tokenizer(broken)
    no_template = copy_tokenizer(tmp_path, "no-template", chat_template=None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        Tokenizer(no_template).apply_chat_template(CHATS[0])


def test_the_load_path_never_imports_transformers(tmp_path: Path) -> None:
    """Building prompts (cold and cached) and starting the sim's tokenizer load neither
    transformers nor torch; a cached set loads no tokenizer library at all."""
    code = (
        "import sys\n"
        "from loadgen.workload import WorkloadSpec, build_prompts\n"
        "assert 'numpy' not in sys.modules and 'tokenizers' not in sys.modules, 'import loadgen.workload is lean'\n"
        "spec = WorkloadSpec(num_prompts=20, input_len=64, chat=True)\n"
        "first = build_prompts(spec)\n"
        "if sys.argv[1] == 'cached':\n"
        "    assert 'tokenizers' not in sys.modules and 'numpy' not in sys.modules, 'a cached set loads nothing'\n"
        "else:\n"
        "    from launcher.sim.tokens import SimTokenizer\n"
        "    SimTokenizer('deepseek-r1').chat_ids(first[0].messages)\n"
        "bad = [m for m in ('transformers', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {"LOADGEN_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(REPO_ROOT),
           "PATH": "/usr/bin:/bin"}
    for mode in ("cold", "cached"):
        done = subprocess.run([sys.executable, "-c", code, mode], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
