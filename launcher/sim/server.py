"""``loadgen-launch serve --engine sim`` / ``python -m launcher.sim``: options and
the foreground server process (one process, one uvloop event loop)."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from launcher.errors import LauncherError
from launcher.sim.faults import FaultConfig
from launcher.sim.profiles import KV_ALLOCATIONS, ProfileError, available_profiles, load_profile

EXAMPLES = """examples:
  python -m launcher.sim --port 8000 --profile fast
  loadgen-launch serve --engine sim --profile sglang-h20x8-r1 --max-model-len 65536
  python -m launcher.sim --fault-429 0.05 --fault-reset-mid 0.01 --fault-seed 7
  python -m launcher.sim --reasoning-fraction 0.7 --reasoning-field reasoning
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2
        self.exit(2, f"sim: error: {message} (see --help)\n")


class _ArgsRefused(LauncherError, ValueError):
    pass


class _CheckingParser(_Parser):
    """Raises instead of exiting, so the launcher can check a sim command line in-process."""

    def error(self, message: str) -> NoReturn:
        raise _ArgsRefused(message)


def _unknown_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """Name the first unknown flag and the closest real one."""
    flag = next((u for u in unknown if u.startswith("-")), unknown[0]).split("=", 1)[0]
    close = difflib.get_close_matches(flag, list(parser._option_string_actions), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    if not flag.startswith("-"):
        return f"unexpected argument {flag!r}; the sim takes only --options"
    return f"{flag} is not a sim option{hint}"


def _checked(convert: Callable[[str], Any], noun: str, ok: Callable[[Any], bool], refusal: str):
    """An argparse ``type``: ``convert(text)``, refused with one clear line when it does
    not parse (``'x' is not <noun>``) or when ``ok(value)`` is false (``refusal``,
    formatted with ``text`` and ``value``)."""

    def check(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(refusal.format(text=text, value=value))
        return value

    return check


_prob = _checked(float, "a number", lambda v: 0.0 <= v <= 1.0, "{text} is not a probability within 0..1")
# ``not v < x`` rather than ``v >= x`` below: a NaN passes, as it always has.
_positive_int = _checked(int, "an integer", lambda v: not v < 1, "{text} must be >= 1")
_nonneg_float = _checked(float, "a number", lambda v: not v < 0, "{text} must be >= 0")
_positive_float = _checked(float, "a number", lambda v: v > 0 and v != float("inf"), "{text} must be a positive number")
_field_name = _checked(str, "a field name", lambda v: v.isidentifier() and v.isascii(),
                       "'{text}' is not a JSON field name (letters, digits, underscores)")
_port = _checked(int, "a port number", lambda v: 0 <= v <= 65535, "port {value} is outside 0..65535")


def build_parser(parser_class: type[argparse.ArgumentParser] = _Parser) -> argparse.ArgumentParser:
    p = parser_class(
        prog="sim",
        description="OpenAI-compatible LLM server emulator: continuous batching with a timing profile, "
        "real tokenizer counts, fault injection.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1; --host 0.0.0.0 listens on every interface)")
    p.add_argument("--port", type=_port, default=8000, help="port to bind; 0 picks a free one (default: 8000)")
    p.add_argument("--profile", default="fast",
                   help=f"timing profile name ({', '.join(available_profiles())}) or a .json path (default: fast)")
    p.add_argument("--model", default="deepseek-r1", help="model name served by /v1/models (default: deepseek-r1)")
    p.add_argument("--tokenizer", default="deepseek-r1",
                   help="tokenizer folder, or deepseek-r1 for the bundled one (default: deepseek-r1)")
    p.add_argument("--max-model-len", type=_positive_int, default=8192,
                   help="context length; prompt + max_tokens above it is a 400 (default: 8192)")
    p.add_argument("--tokens-per-chunk", type=_positive_int, default=1,
                   help="tokens per decode step and SSE chunk, like speculative decoding (default: 1)")
    p.add_argument("--max-num-seqs", type=_positive_int, help="override the profile's batch slots")
    p.add_argument("--kv-tokens", type=_positive_int, help="override the profile's KV cache size in tokens")
    p.add_argument("--kv-allocation", choices=list(KV_ALLOCATIONS),
                   help="reserve prompt + max_tokens at admission (no preemption); lazy: grow KV per token and "
                        "preempt like vLLM when it runs out; ratio: admit like SGLang against a decaying share of "
                        "the outputs still to come, retract when it runs out (default: profile's, reserve)")
    p.add_argument("--natural-len-median", type=_nonneg_float,
                   help="median output length when ignore_eos is off; 0 = always max_tokens (default: profile's)")
    p.add_argument("--natural-len-sigma", type=_nonneg_float,
                   help="log-normal sigma of that length (default: profile's)")
    p.add_argument("--reasoning-fraction", type=_prob, metavar="F",
                   help="reasoning model: the first F of each chat output streams as reasoning, the rest as "
                        "content; chat_template_kwargs enable_thinking=false turns it off (default: profile's, 0)")
    p.add_argument("--reasoning-field", type=_field_name, default="reasoning_content", metavar="NAME",
                   help="the delta field reasoning streams under: reasoning_content (vLLM < 0.10, SGLang) or "
                        "reasoning (newer vLLM); any other name plays a server a client does not know "
                        "(default: reasoning_content)")
    p.add_argument("--seed", type=int, default=0, help="seed for output lengths and text (default: 0)")
    p.add_argument("--time-scale", type=_positive_float, default=1.0, metavar="X",
                   help="run the profile X times faster: step, prefill and so TTFT and TPOT divided by X "
                        "(capacities unchanged; /version reports it) (default: 1)")
    p.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                   help="turn the prefix cache off (no cached tokens in usage, no prefix-cache counters)")
    p.add_argument("--block-size", type=_positive_int, default=16,
                   help="prefix-cache block size in tokens, as vLLM's --block-size (default: 16)")
    g = p.add_argument_group("fault injection (per-request probabilities)")
    g.add_argument("--fault-429", type=_prob, default=0.0, metavar="P", help="answer HTTP 429")
    g.add_argument("--fault-500", type=_prob, default=0.0, metavar="P", help="answer HTTP 500")
    g.add_argument("--fault-reset-before", type=_prob, default=0.0, metavar="P",
                   help="reset the connection before the first byte")
    g.add_argument("--fault-reset-mid", type=_prob, default=0.0, metavar="P", help="reset the connection mid-stream")
    g.add_argument("--fault-stall", type=_prob, default=0.0, metavar="P", help="stall the stream mid-way")
    g.add_argument("--stall-ms", type=_nonneg_float, default=2000.0, help="length of a stall (default: 2000)")
    g.add_argument("--fault-malformed", type=_prob, default=0.0, metavar="P", help="send one malformed event")
    g.add_argument("--fault-cache-reset", choices=["refuse", "hang"], default="",
                   help="make POST /reset_prefix_cache and /flush_cache answer 400, or never answer")
    g.add_argument("--fault-seed", type=int, default=0, help="seed of the fault draws (default: 0)")
    g.add_argument("--startup-delay", type=_nonneg_float, default=0.0, metavar="S",
                   help="seconds during which /health answers 503 (default: 0)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    return p


def check_argv(argv: list[str]) -> str | None:
    """The one-line reason the sim would refuse ``argv``, or None (what the launcher checks before starting)."""
    try:
        parse_config(argv, build_parser(_CheckingParser))
    except _ArgsRefused as exc:
        return str(exc)
    return None


def parse_config(argv: list[str], parser: argparse.ArgumentParser | None = None):  # -> SimConfig (lazy import)
    # late, as every import here: --help and a refused flag stay instant
    from launcher.sim.state import SimConfig

    parser = parser or build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(_unknown_message(parser, unknown))
    try:
        profile = load_profile(args.profile)
        changes = {}
        if args.max_num_seqs is not None:
            changes["max_num_seqs"] = args.max_num_seqs
        if args.kv_tokens is not None:
            changes["kv_tokens"] = args.kv_tokens
        if args.kv_allocation is not None:
            changes["kv_allocation"] = args.kv_allocation
        if args.natural_len_median is not None:
            changes["natural_len_median"] = args.natural_len_median
        if args.natural_len_sigma is not None:
            changes["natural_len_sigma"] = args.natural_len_sigma
        if args.reasoning_fraction is not None:
            changes["reasoning_fraction"] = args.reasoning_fraction
        if changes:
            profile = profile.replace(**changes)
        profile = profile.scaled(args.time_scale)
        faults = FaultConfig(
            p_429=args.fault_429, p_500=args.fault_500, p_reset_before=args.fault_reset_before,
            p_reset_mid=args.fault_reset_mid, p_stall=args.fault_stall, stall_ms=args.stall_ms,
            p_malformed=args.fault_malformed, startup_delay=args.startup_delay, seed=args.fault_seed,
        )
    except (ProfileError, ValueError) as exc:
        parser.error(str(exc))
    return SimConfig(
        host=args.host, port=args.port, model=args.model, tokenizer=args.tokenizer, profile=profile,
        max_model_len=args.max_model_len, tokens_per_chunk=args.tokens_per_chunk, seed=args.seed, faults=faults,
        time_scale=args.time_scale, prefix_cache=args.prefix_cache, block_size=args.block_size,
        cache_reset_fault=args.fault_cache_reset, reasoning_field=args.reasoning_field,
    ), args


async def serve(cfg, tokenizer) -> None:
    """Run until SIGTERM/SIGINT, then close listeners and streams."""
    from aiohttp import web

    from launcher.sim.api import build_app  # late: start-up time, as above

    app = build_app(cfg, tokenizer)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, backlog=4096, reuse_address=True)
    await site.start()
    addresses = runner.addresses  # the real port when --port 0 was asked
    port = addresses[0][1] if addresses else cfg.port
    scale = f" at {cfg.time_scale:g}x speed" if cfg.time_scale != 1.0 else ""
    print(f"sim: serving model '{cfg.model}' with profile '{cfg.profile.name}'{scale} on http://{cfg.host}:{port}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Parse sim's options and serve in the foreground until stopped."""
    cfg, args = parse_config(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=args.log_level.upper(), format="sim %(levelname)s %(message)s")
    logging.getLogger("aiohttp").setLevel(max(logging.ERROR, logging.getLogger().level))
    from launcher.sim.tokens import SimTokenizer
    from loadgen.workload.tokenizer import TokenizerError

    try:
        tokenizer = SimTokenizer(cfg.tokenizer)
    except TokenizerError as exc:
        print(f"sim: error: {exc}", file=sys.stderr)
        sys.exit(2)
    import uvloop

    try:
        uvloop.run(serve(cfg, tokenizer))
    except OSError as exc:  # port in use, bad host
        print(f"sim: error: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}; "
              f"pick another --port or --host", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        pass
