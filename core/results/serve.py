"""``finetty serve``: an OpenAI-compatible API for a run's result (stdlib ``http.server``).

- ``GET /v1/models``: the one model served, named after the run (``RUN`` or
  ``RUN:step-000040``).
- ``POST /v1/chat/completions``: ``messages``, optional ``model``,
  ``temperature``, ``top_p``, ``max_tokens`` / ``max_completion_tokens``,
  ``repetition_penalty`` (an extension); with ``"stream": true`` the answer
  comes as server-sent events (``chat.completion.chunk`` objects, then
  ``data: [DONE]``).

The server binds 127.0.0.1 unless told otherwise; any other address needs an
API key, and when a key is set every request must carry
``Authorization: Bearer KEY``. One answer is generated at a time (the model
is shared); other requests wait their turn. A client that disconnects
mid-stream stops its generation.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from finetty.core.results import inference
from finetty.core.errors import InputError

MAX_BODY = 8 * 2**20
ROLES = ("system", "user", "assistant", "tool")


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


def parse_request(body: Any, model_id: str, default_max_tokens: int) -> tuple[list[dict], Any, bool]:
    """``(messages, settings, stream)`` from a chat completions request body; RequestError when it is wrong."""
    if not isinstance(body, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
    model = body.get("model")
    if model not in (None, "", model_id):
        raise RequestError(HTTPStatus.NOT_FOUND, f"the model {model!r} does not exist; this server serves "
                           f"{model_id!r}", code="model_not_found", param="model")
    raw = body.get("messages")
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
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= 1_000_000:
        raise RequestError(HTTPStatus.BAD_REQUEST, "max_tokens must be a positive integer", param="max_tokens")
    if body.get("n", 1) != 1:
        raise RequestError(HTTPStatus.BAD_REQUEST, "only n=1 is supported", param="n")
    settings = inference.GenerationSettings(
        temperature=_number(body, "temperature", 0.0, 2.0), top_p=_number(body, "top_p", 0.0, 1.0),
        max_new_tokens=max_tokens, repetition_penalty=_number(body, "repetition_penalty", 0.01, 10.0))
    return messages, settings, bool(body.get("stream", False))


class Handler(BaseHTTPRequestHandler):
    server: "APIServer"
    protocol_version = "HTTP/1.1"
    server_version = "finetty"

    def log_message(self, format: str, *args) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    # -- plumbing ---------------------------------------------------------------------------------

    def _send_json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: RequestError) -> None:
        if error.status == HTTPStatus.UNAUTHORIZED:
            self.send_response(error.status)
            data = json.dumps(error.body()).encode()
            self.send_header("WWW-Authenticate", "Bearer")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self._send_json(error.status, error.body())

    def _authorized(self) -> bool:
        key = self.server.api_key
        if not key:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())

    def _guard(self) -> bool:
        if self._authorized():
            return True
        self._error(RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong API key (send 'Authorization: Bearer "
                                 "KEY')", kind="authentication_error", code="invalid_api_key"))
        return False

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length > MAX_BODY:
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request body is too large")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except ValueError:
            raise RequestError(HTTPStatus.BAD_REQUEST, "the request body is not valid JSON") from None

    # -- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._guard():
            return
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._send_json(200, {"object": "list", "data": [self.server.model_card()]})
        elif self.path.rstrip("/").startswith("/v1/models/"):
            name = self.path.rstrip("/")[len("/v1/models/"):]
            if name == self.server.loaded.model_id:
                self._send_json(200, self.server.model_card())
            else:
                self._error(RequestError(HTTPStatus.NOT_FOUND, f"no model {name!r}", code="model_not_found"))
        else:
            self._error(RequestError(HTTPStatus.NOT_FOUND, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        if not self._guard():
            return
        try:
            if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
                raise RequestError(HTTPStatus.NOT_FOUND, f"no route POST {self.path}")
            messages, settings, stream = parse_request(self._read_json(), self.server.loaded.model_id,
                                                       self.server.max_tokens)
        except RequestError as error:
            self._error(error)
            return
        generation = inference.Generation(self.server.loaded, messages, settings)
        with self.server.loaded.lock:
            if stream:
                self._stream(generation)
            else:
                self._complete(generation)

    def _complete(self, generation: inference.Generation) -> None:
        created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        try:
            text = generation.run()
        except Exception as exc:
            self._error(RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {exc}",
                                     kind="server_error"))
            return
        self._send_json(200, {
            "id": ident, "object": "chat.completion", "created": created, "model": self.server.loaded.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": generation.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
                      "total_tokens": generation.prompt_tokens + generation.completion_tokens}})

    def _stream(self, generation: inference.Generation) -> None:
        created, ident = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        model_id = self.server.loaded.model_id

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model_id,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            return f"data: {json.dumps(payload)}\n\n".encode()

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        try:
            self._write(chunk({"role": "assistant", "content": ""}))
            try:
                for piece in generation:
                    self._write(chunk({"content": piece}))
            except (BrokenPipeError, ConnectionResetError):
                raise
            except Exception as exc:
                error = RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"generation failed: {exc}",
                                     kind="server_error")
                self._write(f"data: {json.dumps(error.body())}\n\n".encode())
                return
            self._write(chunk({}, generation.finish_reason))
            self._write(b"data: [DONE]\n\n")
        except (BrokenPipeError, ConnectionResetError):
            generation.stop()  # the client left: the generator's close stops the model too

    def _write(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()


class APIServer(ThreadingHTTPServer):
    # Handler threads are joined when the server closes: a daemon thread still running at interpreter exit
    # is ended inside whatever C++ it is in, and the process aborts ("terminate called without an active
    # exception"). Closing first shuts every open connection, so an idle keep-alive client cannot hold it
    # open and a generation for a client that is gone stops.
    daemon_threads = False
    block_on_close = True

    def __init__(self, loaded: inference.Loaded, host: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, max_tokens: int = 512, verbose: bool = False):
        check_binding(host, api_key)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.loaded, self.api_key, self.max_tokens, self.verbose = loaded, api_key, max_tokens, verbose
        self.created = int(time.time())
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((host, port), Handler)

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._open_lock:
            for connection in self._open:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        super().server_close()  # joins the handler threads

    def model_card(self) -> dict:
        return {"id": self.loaded.model_id, "object": "model", "created": self.created, "owned_by": "finetty"}

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"
