"""The ``sessions`` dataset: synthetic multi-turn conversations of exact token counts.

Every set shares one system prompt (so a prefix cache sees what a chat product's
does); each session draws its number of turns, and each turn its new user tokens,
output tokens and think time, from the spec's values or distributions. User texts
(and, for ``--history recorded``, the replies) are fitted to exact token counts.

Exactness over a growing history comes from the chat template's shape, probed once
(:func:`probe_shape`): when the template renders turn k as turn k-1's prompt plus the
reply, the new user message and wrappers fenced by special tokens, turn k's length is
turn k-1's plus a constant plus the two contents' own tokens — so a live reply only
needs its own tokens counted at run time (:mod:`loadgen.sessions`), never the whole
conversation. A template without that shape is counted in full per turn instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from loadgen.records import Prompt, Session, SessionShape, Turn
from loadgen.workload.dist import parse_dist
from loadgen.workload.errors import WorkloadError
from loadgen.workload.fit import TokenizerView
from loadgen.workload.spec import SessionSpec, WorkloadSpec

HISTORIES = ("live", "recorded")
THINK_END = "</think>"
_SALT = 11
CHECK_SESSIONS = 64  # sessions whose known turns are re-counted after a build ...
CHECK_TOKENS = 65_536  # ... up to about this many prompt tokens beyond their first turns
_PROBES = (("Zq7 user one", "Zq7 reply one", "Zq7 user two"), ("Qx9 reply two", "Qx9 user three"))


def session_dists(spec: WorkloadSpec) -> dict[str, Any]:
    """The spec's five distributions, each checked (one-line errors naming the option)."""
    s = spec.session or SessionSpec()
    if s.history not in HISTORIES:
        raise WorkloadError(f"--history must be 'live' or 'recorded', got '{s.history}'")
    return {
        "turns": parse_dist(s.turns, "--session-turns", minimum=1),
        "user": parse_dist(s.user_len if s.user_len is not None else str(spec.input_len), "--turn-input-len", minimum=1),
        "output": parse_dist(s.output_len if s.output_len is not None else str(spec.output_len), "--turn-output-len",
                             minimum=1),
        "system": parse_dist(s.system_len, "--system-prompt-len"),
        "think": parse_dist(s.think_s, "--think-time"),
    }


def _fenced(view: TokenizerView, text: str, *, left: bool) -> bool:
    """Whether ``text`` ends (left of a content) or starts (right of it) with a special token."""
    if text == "":
        return False
    for s, (lstrip, rstrip) in view.added_strings.items():
        if left and text.endswith(s) and not rstrip:
            return True
        if not left and text.startswith(s) and not lstrip:
            return True
    return False


def probe_shape(view: TokenizerView, system: str | None, tokenizer: str, history: str) -> tuple[SessionShape, int]:
    """How the template grows a conversation, and the first turn's template overhead.

    Renders a three-turn probe conversation: additive when each turn's text is the
    previous prompt followed by reply, wrapper, user message, wrapper — every content
    fenced by special tokens so it is tokenized on its own — and the wrapper is the
    same every turn. ``drops_thinking``: a reply's text up to ``</think>`` is not in
    the rendered history (DeepSeek-R1).
    """
    (u1, a1, u2), (a2, u3) = _PROBES
    head = [{"role": "system", "content": system}] if system else []
    convo = [*head, {"role": "user", "content": u1}]
    try:
        r1 = view.render(convo)
        r2 = view.render([*convo, {"role": "assistant", "content": a1}, {"role": "user", "content": u2}])
        r3 = view.render([*convo, {"role": "assistant", "content": a1}, {"role": "user", "content": u2},
                          {"role": "assistant", "content": a2}, {"role": "user", "content": u3}])
        thought = view.render([*convo, {"role": "assistant", "content": "Zq7 thought" + THINK_END + a1},
                               {"role": "user", "content": u2}])
    except Exception as exc:  # jinja errors come in many types
        raise WorkloadError(f"the tokenizer's chat template failed on a multi-turn conversation: {exc}") from None
    first = view.count_messages(convo) - sum(len(view.encode(t)) for t in (system or "", u1) if t)
    drops = "Zq7 thought" not in thought
    additive = False
    per_turn = 0
    if r2.startswith(r1) and r3.startswith(r2):
        walls = []
        for tail, (a, u) in ((r2[len(r1):], (a1, u2)), (r3[len(r2):], (a2, u3))):
            i, j = tail.find(a), tail.find(u)
            if 0 <= i and i + len(a) <= j:
                walls.append((tail[:i], tail[i + len(a):j], tail[j + len(u):]))
        if len(walls) == 2 and walls[0] == walls[1]:
            pre, mid, post = walls[0]
            left_ok = _fenced(view, pre, left=True) or (pre == "" and _fenced(view, r1, left=True))
            additive = (left_ok and _fenced(view, mid, left=False) and _fenced(view, mid, left=True)
                        and _fenced(view, post, left=False))
            per_turn = sum(len(view.encode(w)) for w in (pre, mid, post) if w)
    return SessionShape(tokenizer, history, per_turn, additive, drops), first


def reply_in_history(shape: SessionShape, reply: str) -> str:
    """The part of a reply the template keeps in later turns' history."""
    if shape.drops_thinking and THINK_END in reply:
        return reply.split(THINK_END)[-1]
    return reply


def build_sessions(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    """One :class:`Prompt` per session (its first turn), carrying the session: synthetic,
    or real conversations with ``--dataset-path``."""
    if not spec.chat:
        raise WorkloadError("sessions are conversations: use --backend openai-chat")
    if spec.dataset_path:
        return build_conversations(view, spec)
    d = session_dists(spec)
    history = (spec.session or SessionSpec()).history
    rng = np.random.default_rng([spec.seed, _SALT])
    n = spec.num_prompts
    system_len = d["system"].ints(rng, 1, 0)[0]
    system = _texts(view, [system_len], rng)[0] if system_len else None
    shape, first = probe_shape(view, system, spec.tokenizer, history)
    system_tokens = len(view.encode(system)) if system else 0
    turn_counts = d["turns"].ints(rng, n, 1)
    prompts: list[Prompt] = []
    for sid, k in enumerate(turn_counts):
        users = d["user"].ints(rng, k, 1)
        outputs = d["output"].ints(rng, k, 1)
        thinks = [0.0, *np.maximum(d["think"].draw(rng, k - 1), 0.0).tolist()]
        texts = _texts(view, users, rng)
        replies = _texts(view, outputs, rng) if history == "recorded" else [None] * k
        prompts.append(_assemble(view, shape, sid, system, first + system_tokens + users[0], texts, users, outputs,
                                 thinks, replies, outputs))
    return prompts


def _assemble(view: TokenizerView, shape: SessionShape, sid: int, system: str | None, first_total: int,
              texts: list[str], users: list[int], outputs: list[int], thinks: list[float],
              replies: list[str | None], reply_lens: list[int]) -> Prompt:
    """One session's turns with every length known before the run (the first turn's, and
    with recorded history every turn's: the previous plus wrapper, reply and user tokens)."""
    recorded = shape.history == "recorded"
    turns = []
    total = first_total
    for t in range(len(texts)):
        if t:
            total += shape.per_turn + reply_lens[t - 1] + users[t]
        turns.append(Turn(texts[t], users[t], outputs[t], thinks[t], total if (t == 0 or recorded) else 0, replies[t]))
    if not shape.additive:  # count what is known in full
        draft = Session(sid, system, tuple(turns), shape)
        turns = [
            replace(turn, input_len=view.count_messages(turn_messages(draft, t, replies))) if turn.input_len else turn
            for t, turn in enumerate(turns)
        ]
    session = Session(sid, system, tuple(turns), shape)
    return Prompt(sid, turns[0].input_len, outputs[0], messages=first_messages(session), session=session)


def build_conversations(view: TokenizerView, spec: WorkloadSpec) -> list[Prompt]:
    """Sessions from real conversations (:mod:`loadgen.workload.conversations`): each
    turn's user message, recorded reply and think time from the file; output lengths are
    the recorded replies' (else ``--turn-output-len``), think times the file's (else
    ``--think-time``)."""
    from loadgen.workload.conversations import load_conversations

    d = session_dists(spec)
    given = spec.session or SessionSpec()
    history = given.history
    rng = np.random.default_rng([spec.seed, _SALT])
    convos = load_conversations(spec.dataset_path or "", spec.num_prompts, spec.seed)
    shapes: dict[str | None, tuple[SessionShape, int]] = {}
    prompts: list[Prompt] = []
    for sid, c in enumerate(convos):
        if c.system not in shapes:
            shapes[c.system] = probe_shape(view, c.system, spec.tokenizer, history)
        shape, _ = shapes[c.system]
        k = len(c.turns)
        users = [len(view.encode(t.user)) for t in c.turns]
        drawn_out = d["output"].ints(rng, k, 1)
        drawn_think = np.maximum(d["think"].draw(rng, k), 0.0).tolist()
        recorded_lens = [len(view.encode(t.reply)) if t.reply else 0 for t in c.turns]
        outputs = [t.output_len or (recorded_lens[i] if given.output_len is None and recorded_lens[i] else drawn_out[i])
                   for i, t in enumerate(c.turns)]
        thinks = [0.0] + [t.think_s if t.think_s is not None else drawn_think[i] for i, t in enumerate(c.turns)][1:]
        if history == "recorded" and not all(t.reply for t in c.turns[:-1]):
            raise WorkloadError(f"{c.where}: --history recorded needs a reply to every turn but the last; "
                                "add the assistant replies or use --history live")
        replies = [t.reply for t in c.turns] if history == "recorded" else [None] * k
        reply_lens = [len(view.encode(reply_in_history(shape, r))) if r else 0 for r in replies]
        head = [{"role": "system", "content": c.system}] if c.system else []
        first_total = view.count_messages([*head, {"role": "user", "content": c.turns[0].user}])
        prompts.append(_assemble(view, shape, sid, c.system, first_total, [t.user for t in c.turns], users, outputs,
                                 thinks, replies, reply_lens))
    return prompts


def _texts(view: TokenizerView, lengths: list[int], rng: np.random.Generator) -> list[str]:
    """Texts of exactly these token counts: joined from the piece table (no encode), else fitted."""
    table = view.pieces
    if table is None:
        return [view.fit(n, rng)[0] for n in lengths]
    draws = rng.integers(0, table.size, sum(lengths))
    out, at = [], 0
    for n in lengths:
        out.append(table.join(draws[at:at + n]))
        at += n
    return out


def first_messages(session: Session) -> list[dict[str, Any]]:
    """The first turn's messages: the system prompt (if any) and the first user message."""
    head = [{"role": "system", "content": session.system}] if session.system else []
    return [*head, {"role": "user", "content": session.turns[0].user}]


def turn_messages(session: Session, upto: int, replies: list[str]) -> list[dict[str, Any]]:
    """Turn ``upto``'s whole conversation: system, then user/reply pairs, then its user message."""
    out = first_messages(session)
    for t in range(1, upto + 1):
        out.append({"role": "assistant", "content": replies[t - 1]})
        out.append({"role": "user", "content": session.turns[t].user})
    return out


def check_sessions(view: TokenizerView, prompts: list[Prompt], check: Any) -> int:
    """Re-count what is known before the run — first turns, and every turn of recorded
    history in a spread sample of sessions — through the tokenizer's public API
    (``check`` is :func:`loadgen.workload.check_lengths`); returns how many were counted."""
    from loadgen.workload.verify import spread

    known: list[Prompt] = []
    tokens = 0
    for p in spread(prompts, CHECK_SESSIONS):
        s = p.session
        assert s is not None
        replies = [t.reply or "" for t in s.turns]
        for k, t in enumerate(s.turns):
            if t.input_len and (k == 0 or tokens + t.input_len <= CHECK_TOKENS):
                known.append(Prompt(p.id, t.input_len, t.output_len, messages=turn_messages(s, k, replies)))
                tokens += t.input_len
    bad = check(view.tok, known)
    if bad:
        pid, built, counted = bad[0]
        raise WorkloadError(
            f"session {pid} was built to {built} prompt tokens but the tokenizer counts {counted}: "
            "this chat template does not grow by whole turns; use another --tokenizer"
        )
    return len(known)
