"""``finetty serve``: an OpenAI-compatible API for a run's result, on uvicorn and starlette.

- ``GET /health``: ``{"status": "ok", "model": ...}`` once the model is loaded.
- ``GET /v1/models``: the one model served, named after the run (``RUN`` or
  ``RUN:step-000040``); ``GET /v1/models/ID``.
- ``POST /v1/chat/completions`` (``messages``) and ``POST /v1/completions``
  (``prompt``): ``model``, ``temperature``, ``top_p``, ``max_tokens`` /
  ``max_completion_tokens``, ``stop`` (a string or up to 4), ``seed``,
  ``repetition_penalty`` (an extension), ``stream`` with
  ``stream_options.include_usage`` (server-sent events, then ``data: [DONE]``).
  Anything else a client may send that changes the answer (``n`` above 1,
  ``tools``, ``response_format``, ``logprobs``, penalties, ...) is refused
  with a 400 naming the parameter rather than silently ignored.

Every error is OpenAI-style JSON, ``{"error": {"message", "type", "param",
"code"}}``, including the server's own 400 for a request HTTP cannot parse
(``Content-Length: -1``). Bodies over ``MAX_BODY`` get a 413 however they are
sent (length or chunked); a prompt longer than the model's context a 400
naming both lengths. A rejected request's unread body is consumed by the HTTP
parser (h11) as that request's body, so it is never read as the next request
on a keep-alive connection.

Requests are queued and batched: one scheduler thread takes every request
waiting (up to ``max_batch``) and generates their answers together in one
left-padded ``generate`` with a shared KV cache (``inference.generate``), each
with its own settings, seed and stop strings; requests that arrive meanwhile
form the next batch. A client that disconnects cancels its sequence, which
stops at the next decoding step.

The server binds 127.0.0.1 unless told otherwise; any other address needs an
API key, and when a key is set every request must carry
``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from http import HTTPStatus
from typing import Any

from finetty.core.errors import InputError
from finetty.core.results import inference

MAX_BODY = 8 * 2**20
ROLES = ("system", "user", "assistant", "tool")
MAX_STOPS = 4
PROMPT = "prompt"  # the completions API's text field (not the prompt-tuning method)
#: what a request may carry: everything else that is set is refused by name
ACCEPTED = {"model", "messages", "prompt", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
            "seed", "stream", "stream_options", "repetition_penalty", "user", "n", "logprobs", "echo",
            "presence_penalty", "frequency_penalty", "best_of", "parallel_tool_calls", "store", "metadata"}
#: accepted only at the value that changes nothing
NEUTRAL = {"n": (1,), "logprobs": (False,), "echo": (False,), "presence_penalty": (0, 0.0),
           "frequency_penalty": (0, 0.0), "best_of": (1,), "parallel_tool_calls": (True, False),
           "store": (False,)}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, api_key: str | None) -> None:
    if not is_loopback(host) and not api_key:
        raise InputError("--host", host, "is not a loopback address, so anyone who can reach it could use the model",
                         "add --api-key KEY (clients send 'Authorization: Bearer KEY'), or bind 127.0.0.1")


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.kind, self.code, self.param = status, kind, code, param

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a number from {low:g} to {high:g}", param=name)
    return float(value)


def _unsupported(body: dict) -> None:
    for name, value in body.items():
        neutral = name in NEUTRAL and any(value == v and type(value) is type(v) for v in NEUTRAL[name])
        if value is None or neutral or (name in ACCEPTED and name not in NEUTRAL):
            continue
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} is not supported by this server (finetty serve "
                           f"implements: {', '.join(sorted(ACCEPTED - set(NEUTRAL)))})",
                           code="unsupported_parameter", param=name)


def _messages(raw: Any) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(HTTPStatus.BAD_REQUEST, "messages must be a non-empty list of {role, content}",
                           param="messages")
    messages = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"messages[{i}] needs a role ({', '.join(ROLES)})",
                               param="messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content
                              if isinstance(part, dict) and part.get("type") == "text")
        if not isinstance(content, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"messages[{i}].content must be text", param="messages")
        messages.append({"role": message["role"], "content": content})
    return messages


def parse_request(body: Any, model_id: str, default_max_tokens: int, chat: bool = True) -> dict:
    """What a completions request asks for: ``messages`` (chat) or ``text``, ``settings``, ``stream`` and
    ``include_usage``; RequestError (naming the parameter) when it is wrong or asks for what is not implemented."""
    if not isinstance(body, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
    _unsupported(body)
    model = body.get("model")
    if model not in (None, "", model_id):
        raise RequestError(HTTPStatus.NOT_FOUND, f"the model {model!r} does not exist; this server serves "
                           f"{model_id!r}", code="model_not_found", param="model")
    found: dict[str, Any] = {"messages": None, "text": None}
    if chat:
        if body.get(PROMPT) is not None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "prompt belongs to /v1/completions; chat takes messages",
                               param="prompt")
        found["messages"] = _messages(body.get("messages"))
    else:
        prompt = body.get(PROMPT)
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "prompt must be one string", param="prompt")
        found["text"] = prompt
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(name)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 1_000_000:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"{name} must be a positive integer", param=name)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > MAX_STOPS
                             or not all(isinstance(s, str) and s for s in stop)):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"stop must be a string or a list of up to {MAX_STOPS} "
                           "non-empty strings", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise RequestError(HTTPStatus.BAD_REQUEST, "seed must be a non-negative integer", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError(HTTPStatus.BAD_REQUEST, "stream must be true or false", param="stream")
    options = body.get("stream_options")
    if options is not None and (not stream or not isinstance(options, dict)
                                or set(options) - {"include_usage"}):
        raise RequestError(HTTPStatus.BAD_REQUEST, "stream_options is {include_usage: bool}, with stream: true",
                           param="stream_options")
    found["settings"] = inference.GenerationSettings(
        temperature=_number(body, "temperature", 0.0, 2.0), top_p=_number(body, "top_p", 0.0, 1.0),
        max_new_tokens=max_tokens, repetition_penalty=_number(body, "repetition_penalty", 0.01, 10.0),
        seed=seed, stop=tuple(stop or ()))
    found["stream"] = stream
    found["include_usage"] = bool((options or {}).get("include_usage"))
    return found


# -- the scheduler ---------------------------------------------------------------------------------

class Scheduler:
    """One thread generating for every request: whatever is waiting when it is free goes into one batch.

    ``stats`` counts batches, sequences answered and sequences interrupted (a client that left); ``changed``
    is notified after each change, so a test can wait for a count instead of sleeping.
    """

    def __init__(self, loaded: inference.Loaded, max_batch: int = 16, gather_s: float = 0.02):
        self.loaded, self.max_batch, self.gather_s = loaded, max_batch, gather_s
        self.waiting: list[inference.Sequence] = []
        self.running: list[inference.Sequence] = []
        self.changed = threading.Condition()
        self.stats = {"batches": 0, "sequences": 0, "cancelled": 0, "largest_batch": 0}
        self.recent: collections.deque[inference.Sequence] = collections.deque(maxlen=64)
        """the last sequences answered, newest last (what a test inspects after the fact)"""
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="finetty-serve-scheduler", daemon=True)
        self.thread.start()

    def submit(self, seq: inference.Sequence) -> None:
        with self.changed:
            if self.closing:
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down", kind="server_error")
            self.waiting.append(seq)
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closing = True
            self.cancel_all()
            self.changed.notify_all()
        self.thread.join(timeout=60)

    def cancel_all(self) -> None:
        """Every waiting and running sequence stops at its next step (the server is stopping)."""
        for seq in [*self.waiting, *self.running]:
            seq.cancel()

    def _loop(self) -> None:
        while True:
            with self.changed:
                while not self.waiting and not self.closing:
                    self.changed.wait()
                if self.closing and not self.waiting:
                    return
                # requests sent together arrive a few milliseconds apart: let them join this batch
                self.changed.wait_for(lambda: len(self.waiting) >= self.max_batch or self.closing,
                                      timeout=self.gather_s)
                batch, self.waiting = self.waiting[:self.max_batch], self.waiting[self.max_batch:]
                self.running = batch
                self.changed.notify_all()
            inference.generate(self.loaded, batch)  # a sequence cancelled while it waited ends at once
            with self.changed:
                self.running = []
                self.stats["batches"] += 1
                self.stats["sequences"] += len(batch)
                self.stats["cancelled"] += sum(seq.interrupted for seq in batch)
                self.recent.extend(batch)
                self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                self.changed.notify_all()


# -- the application -------------------------------------------------------------------------------

def _error_response(error: RequestError):
    from starlette.responses import JSONResponse

    headers = {"WWW-Authenticate": "Bearer"} if error.status == HTTPStatus.UNAUTHORIZED else {}
    if error.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        headers["Connection"] = "close"  # the rest of a huge body is not worth reading
    return JSONResponse(error.body(), status_code=int(error.status), headers=headers)


class _Auth:
    """ASGI middleware: with an API key, every HTTP request needs ``Authorization: Bearer KEY``."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.key:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.key.encode())):
                response = _error_response(RequestError(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                    kind="authentication_error", code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is over {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():  # a chunked body has no length up front: count as it comes
        body += chunk
        if len(body) > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is over {MAX_BODY} bytes")
    try:
        return json.loads(bytes(body) or b"null")
    except ValueError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON") from None


def build_app(loaded: inference.Loaded, scheduler: Scheduler, api_key: str | None = None, max_tokens: int = 512):
    """The ASGI application (starlette) serving ``loaded`` through ``scheduler``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    created = int(time.time())
    card = {"id": loaded.model_id, "object": "model", "created": created, "owned_by": "finetty"}

    async def health(request):
        return JSONResponse({"status": "ok", "model": loaded.model_id})

    async def models(request):
        return JSONResponse({"object": "list", "data": [card]})

    async def model(request):
        name = request.path_params["name"]
        if name != loaded.model_id:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no model {name!r}", code="model_not_found", param="model")
        return JSONResponse(card)

    async def completions(request, chat: bool):
        asked = parse_request(await _read_json(request), loaded.model_id, max_tokens, chat)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        done = object()

        def deliver(item):
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server went away
                pass

        try:  # tokenizing a long prompt takes a while: not on the event loop
            seq = await run_in_threadpool(inference.sequence, loaded, asked["messages"], asked["settings"],
                                          text=asked["text"], on_text=deliver, on_done=lambda: deliver(done))
        except inference.PromptTooLong as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc), code="context_length_exceeded",
                               param="messages" if chat else "prompt") from None
        scheduler.submit(seq)
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        now = int(time.time())
        kind = "chat.completion" if chat else "text_completion"

        def usage() -> dict:
            return {"prompt_tokens": seq.prompt_tokens, "completion_tokens": seq.completion_tokens,
                    "total_tokens": seq.prompt_tokens + seq.completion_tokens}

        def choice(text: str | None, finish: str | None, first: bool = False) -> dict:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            if not asked["stream"]:
                return {"index": 0, "message": {"role": "assistant", "content": text},
                        "finish_reason": finish, "logprobs": None}
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}

        def failed() -> RequestError:
            return RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {seq.error}",
                                kind="server_error")

        if asked["stream"]:
            async def events():
                def event(payload) -> str:
                    return f"data: {json.dumps(payload)}\n\n"

                base = {"id": ident, "object": f"{kind}.chunk" if chat else kind, "created": now,
                        "model": loaded.model_id}
                try:
                    if chat:
                        yield event({**base, "choices": [choice(None, None, first=True)]})
                    while (piece := await pieces.get()) is not done:
                        yield event({**base, "choices": [choice(piece, None)]})
                    if seq.error is not None:
                        yield event(failed().body())
                        return
                    yield event({**base, "choices": [choice(None, seq.finish_reason)]})
                    if asked["include_usage"]:
                        yield event({**base, "choices": [], "usage": usage()})
                    yield "data: [DONE]\n\n"
                finally:
                    seq.cancel()  # a no-op once finished; a client that left stops its generation here

            return StreamingResponse(events(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        async def collect() -> str:
            while await pieces.get() is not done:
                pass
            return seq.text

        async def disconnected() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        waiting, watching = asyncio.ensure_future(collect()), asyncio.ensure_future(disconnected())
        try:
            await asyncio.wait({waiting, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            if not waiting.done():  # the client left (or the server is stopping): stop its generation
                seq.cancel()
                waiting.cancel()
        if not waiting.done() or waiting.cancelled():
            return JSONResponse({}, status_code=499)
        if seq.error is not None:
            raise failed()
        return JSONResponse({"id": ident, "object": kind, "created": now, "model": loaded.model_id,
                             "choices": [choice(seq.text, seq.finish_reason)], "usage": usage()})

    async def chat_completions(request):
        return await completions(request, True)

    async def text_completions(request):
        return await completions(request, False)

    async def request_error(request, exc: RequestError):
        return _error_response(exc)

    async def http_error(request, exc: HTTPException):
        message = (f"no route {request.method} {request.url.path}" if exc.status_code == 404 else
                   f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else
                   str(exc.detail))
        return _error_response(RequestError(HTTPStatus(exc.status_code), message))

    async def server_error(request, exc: Exception):
        return _error_response(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {exc}",
                                            kind="server_error"))

    routes = [Route("/health", health, methods=["GET"])]
    for prefix in ("/v1", ""):
        routes += [Route(f"{prefix}/models", models, methods=["GET"]),
                   Route(f"{prefix}/models/{{name:path}}", model, methods=["GET"]),
                   Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
                   Route(f"{prefix}/completions", text_completions, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={RequestError: request_error, HTTPException: http_error,
                                                       Exception: server_error})
    return _Auth(app, api_key)


def _protocol():
    """uvicorn's h11 protocol, answering a request it cannot parse (``Content-Length: -1``, a bad header)
    with an OpenAI-style JSON 400 instead of plain text; the connection closes after it, as before."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def send_400_response(self, msg: str) -> None:
            error = RequestError(HTTPStatus.BAD_REQUEST, "malformed HTTP request (its request line, a header or "
                                 "Content-Length)")
            body = json.dumps(error.body()).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                       (b"content-length", str(len(body)).encode())]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                          h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return Protocol


class APIServer:
    """The model behind uvicorn on an already bound socket (so ``port=0`` is known before serving).

    ``serve_forever()`` blocks (Ctrl-C stops it in the main thread); from another thread ``shutdown()`` ends
    it; ``server_close()`` stops the scheduler and closes the socket.
    """

    def __init__(self, loaded: inference.Loaded, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_tokens: int = 512, verbose: bool = False, max_batch: int = 16):
        check_binding(host, api_key)
        self.loaded, self.api_key, self.max_tokens, self.verbose = loaded, api_key, max_tokens, verbose
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self.scheduler = Scheduler(loaded, max_batch=max_batch)
        self._server = None
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        import uvicorn

        config = uvicorn.Config(build_app(self.loaded, self.scheduler, self.api_key, self.max_tokens),
                                http=_protocol(), lifespan="off", log_level="info" if self.verbose else "warning",
                                access_log=self.verbose, timeout_graceful_shutdown=5, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        try:
            self._server.run(sockets=[self.socket])
        finally:
            self._stopped.set()

    def wait_started(self, timeout: float = 30) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._server is not None and self._server.started:
                return True
            time.sleep(0.01)
        return False

    def shutdown(self) -> None:
        with self.scheduler.changed:  # a streaming answer would hold the graceful shutdown open: end them
            self.scheduler.cancel_all()
        if self._server is not None:
            self._server.should_exit = True
            self._stopped.wait(timeout=60)

    def server_close(self) -> None:
        self.scheduler.close()
        self.socket.close()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"
