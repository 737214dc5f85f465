"""HTTP surface of the sim (aiohttp.web): vLLM-shaped OpenAI routes, SGLang's
``/generate``, and the engine loop that paces every stream.

Request validation happens entirely before a request reaches the engine, so a bad
request costs an error body and nothing else; any unexpected exception becomes an
OpenAI-style 500 body rather than a traceback or a dropped connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from launcher import __version__
from launcher.errors import LauncherError
from launcher.sim import exposition as prom
from launcher.sim.engine import Seq, natural_length
from launcher.sim.faults import plan_faults
from launcher.sim.state import SimConfig, SimState
from launcher.sim.streams import ChatStream, CompletionStream, GenerateStream, Stream
from launcher.sim.tokens import ChatTemplateError, SimTokenizer

log = logging.getLogger("launcher.sim")

LONG_PROMPT_CHARS = 4000  # above this, tokenize off the event loop


class ApiError(LauncherError):
    """Becomes an OpenAI-style error body with this status."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


ERROR_TYPES = {400: "BadRequestError", 404: "NotFoundError", 405: "MethodNotAllowed", 429: "RateLimitError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}


def _reset(request: web.Request) -> web.Response:
    """Abort the connection (the client sees a reset) and give aiohttp a response
    it will silently fail to send."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=200)


def error_response(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], key: str, default: int | None, minimum: int = 0) -> int | None:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{key}' must be an integer", key)
    if value < minimum:
        raise ApiError(400, f"'{key}' must be >= {minimum}, got {value}", key)
    return value


def _bool_field(body: dict[str, Any], key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"'{key}' must be true or false", key)
    return value


def _message_text(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ApiError(400, f"messages[{i}] needs a string 'role'", "messages")
        content = msg.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            texts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                else:
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported", "messages")
            content = "\n".join(texts)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", "messages")
        out.append({**msg, "content": content})
    return out


def _thinking(body: dict[str, Any]) -> bool:
    """Whether a chat request lets a reasoning model think: ``chat_template_kwargs``
    ``enable_thinking`` (Qwen3, DeepSeek-R1 templates) or ``thinking`` (DeepSeek-V3.1)
    set to false turns it off, as the real templates do."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is None:
        return True
    if not isinstance(kwargs, dict):
        raise ApiError(400, "'chat_template_kwargs' must be an object", "chat_template_kwargs")
    return kwargs.get("enable_thinking", True) is not False and kwargs.get("thinking", True) is not False


class Api:
    def __init__(self, state: SimState) -> None:
        self.state = state

    # -- plumbing ---------------------------------------------------------------------
    @web.middleware
    async def errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.param)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:  # never a traceback on the wire, never a dead server
            log.exception("internal error on %s", request.path)
            return error_response(500, f"internal error: {type(exc).__name__}: {exc}")

    def _check_ready(self) -> None:
        if not self.state.ready():
            raise ApiError(503, "the server is starting up; retry when GET /health answers 200")

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.state.model:
            raise ApiError(404, f"The model `{model}` does not exist.", "model")

    async def _count(self, fn: Any, *args: Any) -> list[int]:
        """Tokenize; long prompts go to a worker thread so the step loop keeps time."""
        size = len(args[0]) if isinstance(args[0], str) else sum(len(str(x.get("content", ""))) for x in args[0])
        if size < LONG_PROMPT_CHARS:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _limits(self, prompt_len: int, max_tokens: int | None, what: str) -> int:
        limit = self.state.cfg.max_model_len
        if max_tokens is None:
            max_tokens = limit - prompt_len
            if max_tokens < 1:
                raise ApiError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, your {what} "
                    f"has {prompt_len} tokens. Please reduce the length of the {what}.",
                )
        if prompt_len + max_tokens > limit:
            raise ApiError(
                400,
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). "
                f"Please reduce the length of the {what} or completion.",
                "max_tokens",
            )
        why = self.state.engine.admissible(prompt_len, max_tokens)
        if why:
            raise ApiError(400, why, "max_tokens")
        return max_tokens

    # -- generation routes --------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        self._check_ready()
        body = await read_json(request)
        self._check_model(body)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = await self._count(self.state.tok.encode, prompt)
            prompt_len = len(ids)
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            vocab = self.state.tok.vocab_size
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ApiError(400, f"token ids in 'prompt' must be within 0..{vocab - 1}", "prompt")
            ids = prompt
            prompt_len = len(prompt)
        else:
            raise ApiError(400, "'prompt' must be a string or a list of token ids (one prompt per request)", "prompt")
        max_tokens = self._limits(prompt_len, _int_field(body, "max_tokens", 16, 1), "prompt")
        return await self._generate(request, body, CompletionStream, "cmpl", prompt_len, max_tokens, body, ids)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._check_ready()
        body = await read_json(request)
        self._check_model(body)
        messages = _message_text(body.get("messages"))
        try:
            ids = await self._count(self.state.tok.chat_ids, messages)
        except ChatTemplateError as exc:
            raise ApiError(400, str(exc), "messages") from None
        max_tokens = _int_field(body, "max_completion_tokens", None, 1)
        if max_tokens is None:
            max_tokens = _int_field(body, "max_tokens", None, 1)
        max_tokens = self._limits(len(ids), max_tokens, "messages")
        return await self._generate(request, body, ChatStream, "chatcmpl", len(ids), max_tokens, body, ids,
                                    thinking=_thinking(body))

    async def generate(self, request: web.Request) -> web.StreamResponse:
        self._check_ready()
        body = await read_json(request)
        params = body.get("sampling_params") or {}
        if not isinstance(params, dict):
            raise ApiError(400, "'sampling_params' must be an object", "sampling_params")
        if isinstance(body.get("text"), str):
            ids = await self._count(self.state.tok.encode, body["text"])
            prompt_len = len(ids)
        elif isinstance(body.get("input_ids"), list) and body["input_ids"]:
            ids = body["input_ids"]
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ApiError(400, "'input_ids' must be a list of token ids (integers)", "input_ids")
            prompt_len = len(ids)
        else:
            raise ApiError(400, "'text' (a string) or 'input_ids' (a list of ids) is required", "text")
        max_tokens = self._limits(prompt_len, _int_field(params, "max_new_tokens", 128, 1), "prompt")
        opts = {"stream": body.get("stream", False), "ignore_eos": params.get("ignore_eos", False),
                "min_tokens": params.get("min_new_tokens")}
        return await self._generate(request, opts, GenerateStream, "gen", prompt_len, max_tokens, body, ids)

    async def _generate(
        self,
        request: web.Request,
        opts: dict[str, Any],
        stream_cls: type[Stream],
        prefix: str,
        prompt_len: int,
        max_tokens: int,
        body: dict[str, Any],
        ids: list[Any] | None = None,
        *,
        thinking: bool = False,
    ) -> web.StreamResponse:
        state = self.state
        salt = body.get("cache_salt")
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise ApiError(400, "'cache_salt' must be a non-empty string", "cache_salt")
        streaming = _bool_field(opts, "stream")
        ignore_eos = _bool_field(opts, "ignore_eos")
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, "only n=1 is supported", "n")
        min_tokens = _int_field(opts, "min_tokens", 0) or 0
        stream_options = body.get("stream_options") or {}
        if not isinstance(stream_options, dict):
            raise ApiError(400, "'stream_options' must be an object", "stream_options")
        if stream_options and not streaming:
            raise ApiError(400, "stream_options can only be set when stream is true", "stream_options")
        include_usage = _bool_field(stream_options, "include_usage")
        continuous = _bool_field(stream_options, "continuous_usage_stats")

        target = max_tokens if ignore_eos else natural_length(state.profile, state.rng, max_tokens)
        target = max(target, min(min_tokens, max_tokens))
        plan = plan_faults(state.cfg.faults, state.fault_rng, target)
        state.requests_total += 1
        if plan.status:
            state.faults_injected[str(plan.status)] += 1
            if plan.status == 429:
                raise ApiError(429, "injected fault: too many requests, retry later")
            raise ApiError(500, "injected fault: internal server error")
        if plan.reset_before:
            state.faults_injected["reset_before"] += 1
            return _reset(request)

        seq = Seq(next(state.ids), prompt_len, max_tokens, target, time.perf_counter())
        sink = stream_cls(
            state, seq, state.next_id(prefix), plan, streaming=streaming, include_usage=include_usage,
            continuous_usage=continuous, piece_offset=state.rng.getrandbits(20),
            reasoning=round(state.profile.reasoning_fraction * target) if thinking else 0,
        )
        if state.cache is not None and ids is not None:
            # cached prompt tokens are already "prefilled": the engine computes only the rest
            sink.cached = seq.prefilled = state.cache.lookup(ids, salt)
        resp: web.StreamResponse | None = None
        if streaming:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)  # headers go out now
            sink.attach(request.transport, resp.chunked)
            head = sink.head_event()
            if head:
                await resp.write(head)
        else:
            sink.attach(request.transport, False)
        state.engine.submit(seq)
        state.wake()
        try:
            outcome = await sink.done
        except asyncio.CancelledError:
            seq.cancelled = True
            raise
        if outcome != "done":
            return resp if resp is not None else _reset(request)
        if streaming:
            assert resp is not None
            try:
                await resp.write_eof()
            except ConnectionError:
                pass
            return resp
        if plan.malformed_after:
            return web.Response(body=orjson.dumps(sink.body())[:-7], content_type="application/json")
        return web.Response(body=orjson.dumps(sink.body()), content_type="application/json")

    # -- control routes -----------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if not self.state.ready():
            return web.Response(status=503, text="starting")
        return web.Response(status=200)

    async def models(self, request: web.Request) -> web.Response:
        state = self.state
        card = {"id": state.model, "object": "model", "created": state.created, "owned_by": "sim",
                "root": state.model, "parent": None, "max_model_len": state.cfg.max_model_len, "permission": []}
        return web.json_response({"object": "list", "data": [card]}, dumps=lambda o: orjson.dumps(o).decode())

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": __version__, "engine": "sim", "profile": self.state.profile.name,
                                  "time_scale": self.state.cfg.time_scale})

    async def model_info(self, request: web.Request) -> web.Response:
        return web.json_response({"model_path": self.state.model, "tokenizer_path": str(self.state.tok.path),
                                  "is_generation": True})

    async def tokenize(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        self._check_model(body)
        tok = self.state.tok
        if "messages" in body:
            try:
                text = tok.render_chat(_message_text(body["messages"]),
                                       _bool_field(body, "add_generation_prompt", True))
            except ChatTemplateError as exc:
                raise ApiError(400, str(exc), "messages") from None
            ids = tok.encode(text, add_special_tokens=_bool_field(body, "add_special_tokens", False))
        elif isinstance(body.get("prompt"), str):
            ids = await self._count(tok.encode, body["prompt"])
            if not _bool_field(body, "add_special_tokens", True):
                ids = tok.encode(body["prompt"], add_special_tokens=False)
        else:
            raise ApiError(400, "'prompt' (a string) or 'messages' is required", "prompt")
        return web.json_response({"count": len(ids), "max_model_len": self.state.cfg.max_model_len,
                                  "tokens": ids, "token_strs": None})

    async def detokenize(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise ApiError(400, "'tokens' must be a list of token ids", "tokens")
        if any(t < 0 or t >= self.state.tok.vocab_size for t in tokens):
            raise ApiError(400, f"token ids must be within 0..{self.state.tok.vocab_size - 1}", "tokens")
        return web.json_response({"prompt": self.state.tok.decode(tokens)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=render_metrics(self.state), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """vLLM's ``POST /reset_prefix_cache`` (``{"success": ...}``) and SGLang's ``/flush_cache``
        (text); ``--fault-cache-reset`` makes them refuse as the engines do while requests
        hold blocks (vLLM: 200 with success false, SGLang: 400), or never answer."""
        fault = self.state.cfg.cache_reset_fault
        if fault == "hang":
            await asyncio.Event().wait()  # until the client gives up and the server stops
        sglang = request.path == "/flush_cache"
        if fault == "refuse":
            if sglang:
                return web.Response(status=400, text="Cache not flushed. Please check there are no running requests.\n")
            return web.json_response({"success": False})
        if self.state.cache is not None:
            self.state.cache.reset()
        return web.Response(text="Cache flushed.\n") if sglang else web.json_response({"success": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(stats(self.state))

    async def stats_reset(self, request: web.Request) -> web.Response:
        """Start a fresh lateness window (benchmarks skip their ramp-up with it)."""
        self.state.lateness.clear()
        self.state.lateness_hist = prom.Histogram(prom.LATENESS_BUCKETS)
        self.state.chunks_at_reset = self.state.chunks_sent
        self.state.steps_at_reset = self.state.engine.steps
        return web.json_response(stats(self.state))


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
    return ordered[idx]


def stats(state: SimState) -> dict[str, Any]:
    """Plain numbers for benchmarks: step lateness percentiles (exact), counters."""
    late = state.lateness
    return {
        "steps": state.engine.steps,
        "chunks_sent": state.chunks_sent,
        "steps_since_reset": state.engine.steps - state.steps_at_reset,
        "chunks_since_reset": state.chunks_sent - state.chunks_at_reset,
        "requests_total": state.requests_total,
        "finished": dict(state.finished),
        "faults_injected": dict(state.faults_injected),
        "prefix_cache": None if state.cache is None else {
            "queries": state.cache.queries, "hits": state.cache.hits, "blocks": len(state.cache.blocks),
            "capacity_blocks": state.cache.capacity_blocks, "block_size": state.cache.block_size,
            "resets": state.cache.resets},
        "running": len(state.engine.running),
        "waiting": len(state.engine.waiting),
        "step_lateness_ms": {
            "p50": _percentile(late, 0.50) * 1000,
            "p90": _percentile(late, 0.90) * 1000,
            "p99": _percentile(late, 0.99) * 1000,
            "max": (max(late) if late else 0.0) * 1000,
        },
    }


def render_metrics(state: SimState) -> str:
    labels = {"model_name": state.model}
    eng = state.engine
    parts = [
        prom.render_gauge("vllm:num_requests_running", "Number of requests in the running batch.", len(eng.running), labels),
        prom.render_gauge("vllm:num_requests_waiting", "Number of requests waiting to be scheduled.", len(eng.waiting), labels),
        prom.render_gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 means 100 percent.", eng.kv_usage, labels),
        prom.render_gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (older name), 1 means 100 percent.", eng.kv_usage, labels),
        prom.render_counter("vllm:num_preemptions", "Requests preempted (KV freed, recomputed later).",
                         eng.preemptions, labels),
        prom.render_counter("vllm:prompt_tokens", "Prompt tokens of the requests prefilled, cached ones included.",
                            eng.prompt_tokens_total, labels),
        prom.render_counter("sim:prefill_tokens", "Prompt tokens computed: prefix-cache hits excluded, "
                            "recomputation after preemption included.", eng.prefill_tokens_total, labels),
        prom.render_counter("vllm:generation_tokens", "Generation tokens produced.", eng.generation_tokens_total, labels),
    ]
    lines = ["# HELP vllm:request_success_total Finished requests by finish reason.",
             "# TYPE vllm:request_success_total counter"]
    for reason in ("stop", "length"):
        lines.append(f'vllm:request_success_total{{model_name="{state.model}",finished_reason="{reason}"}} '
                     f"{state.finished.get(reason, 0)}")
    parts.append("\n".join(lines) + "\n")
    parts += [
        prom.render_histogram("vllm:time_to_first_token_seconds", "Time to first token.", state.ttft_hist, labels),
        prom.render_histogram("vllm:inter_token_latency_seconds", "Inter-token latency.", state.itl_hist, labels),
        prom.render_histogram("vllm:time_per_output_token_seconds", "Time per output token (older name).",
                           state.itl_hist, labels),
        prom.render_histogram("vllm:e2e_request_latency_seconds", "End-to-end request latency.", state.e2e_hist, labels),
        prom.render_histogram("vllm:request_queue_time_seconds", "Time spent waiting for a slot.", state.queue_hist, labels),
        prom.render_histogram("sim:step_lateness_seconds",
                           "Event-loop lag: engine step start minus its planned start.", state.lateness_hist, labels),
        prom.render_counter("sim:model_time_seconds", "Engine step time planned by the timing model.",
                         state.model_time, labels),
        prom.render_counter("sim:steps", "Engine steps run.", eng.steps, labels),
    ]
    if state.cache is not None:
        parts += [
            prom.render_counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                             state.cache.queries, labels),
            prom.render_counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                             state.cache.hits, labels),
        ]
    lines = ["# HELP sim:faults_injected_total Faults injected by kind.",
             "# TYPE sim:faults_injected_total counter"]
    for kind in ("429", "500", "reset_before", "reset_mid", "stall", "malformed"):
        lines.append(f'sim:faults_injected_total{{model_name="{state.model}",kind="{kind}"}} '
                     f"{state.faults_injected.get(kind, 0)}")
    parts.append("\n".join(lines) + "\n")
    return "".join(parts)


def build_app(cfg: SimConfig, tokenizer: SimTokenizer) -> web.Application:
    state = SimState(cfg, tokenizer)
    api = Api(state)
    app = web.Application(middlewares=[api.errors], client_max_size=64 * 1024 * 1024)
    app["state"] = state
    r = app.router
    r.add_post("/v1/completions", api.completions)
    r.add_post("/v1/chat/completions", api.chat)
    r.add_post("/generate", api.generate)
    r.add_get("/v1/models", api.models)
    r.add_get("/health", api.health)
    r.add_get("/version", api.version)
    r.add_get("/get_model_info", api.model_info)
    r.add_post("/tokenize", api.tokenize)
    r.add_post("/detokenize", api.detokenize)
    r.add_get("/metrics", api.metrics)
    r.add_get("/sim/stats", api.stats)
    r.add_post("/reset_prefix_cache", api.reset_prefix_cache)
    r.add_post("/flush_cache", api.reset_prefix_cache)
    r.add_get("/flush_cache", api.reset_prefix_cache)
    r.add_post("/sim/stats/reset", api.stats_reset)

    async def start_engine(app: web.Application) -> Any:
        task = asyncio.get_running_loop().create_task(state.run_engine())
        yield
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    app.cleanup_ctx.append(start_engine)
    return app
