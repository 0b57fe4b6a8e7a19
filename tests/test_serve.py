"""``finetty serve``: an OpenAI-compatible API on uvicorn, driven with the official ``openai`` client and with
raw sockets where the HTTP framing itself is under test (keep-alive after a refusal, ``Content-Length: -1``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import openai
import pytest

from finetty.core.errors import InputError
from finetty.core.results import inference, serve

from .conftest import REPO, default_signals, finetty
from .results_runs import IDENTITY


@pytest.fixture(scope="module")
def loaded(identity_run):
    return inference.load(identity_run)


@pytest.fixture(scope="module")
def base(identity_run, loaded):
    """The untrained base: it never ends its turn, so its answers run as long as they are allowed."""
    return inference.load_base(identity_run, tokenizer=loaded.tokenizer)


def start(loaded, **options) -> serve.APIServer:
    server = serve.APIServer(loaded, "127.0.0.1", 0, **options)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    assert server.wait_started()
    return server


def stop(server: serve.APIServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(loaded):
    server = start(loaded)
    yield server
    stop(server)


def client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=300)


def ask(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


# -- raw HTTP on one connection --------------------------------------------------------------------

def post(path: str, body: bytes, headers: dict | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json",
             *(f"{k}: {v}" for k, v in (headers or {}).items() if v is not None)]
    if "Content-Length" not in (headers or {}):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def responses(port: int, data: bytes, count: int) -> list[tuple[int, dict, dict]]:
    """Send ``data`` on one connection and read ``count`` responses: ``(status, headers, JSON body)`` each."""
    found = []
    with socket.create_connection(("127.0.0.1", port), timeout=300) as connection:
        connection.sendall(data)
        reader = connection.makefile("rb")
        for _ in range(count):
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline().strip()):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = reader.read(int(headers["content-length"]))
            found.append((status, headers, json.loads(body)))
        if found and found[-1][1].get("connection") == "close":
            assert reader.read() == b"", "the connection closes after the response"
    return found


CHAT = json.dumps({"messages": ask("Who are you?"), "temperature": 0, "max_tokens": 40}).encode()


def test_a_refused_request_body_is_never_read_as_the_next_request(server):
    port = server.server_address[1]
    # the 404's body is a valid request of its own: it must be skipped as a body, not served
    smuggled = post("/v1/chat/completions", CHAT)
    (s1, _, e1), (s2, _, ok) = responses(port, post("/v1/nothing", smuggled) + post("/v1/chat/completions", CHAT),
                                          2)
    assert s1 == 404 and e1["error"]["message"] == "no route POST /v1/nothing"
    assert s2 == 200 and ok["choices"][0]["message"]["content"] == IDENTITY[0][1]


def test_an_unauthenticated_body_is_not_served_and_the_authorised_request_after_it_is(loaded):
    keyed = start(loaded, api_key="s3cret")
    try:
        port = keyed.server_address[1]
        before = keyed.scheduler.stats["sequences"]
        (s1, h1, e1), (s2, _, ok) = responses(
            port, post("/v1/chat/completions", post("/v1/chat/completions", CHAT))
            + post("/v1/chat/completions", CHAT, {"Authorization": "Bearer s3cret"}), 2)
        assert s1 == 401 and h1["www-authenticate"] == "Bearer" and e1["error"]["code"] == "invalid_api_key"
        assert s2 == 200 and ok["choices"][0]["message"]["content"] == IDENTITY[0][1]
        with keyed.scheduler.changed:  # counted just after the answer went out
            assert keyed.scheduler.changed.wait_for(lambda: keyed.scheduler.stats["sequences"] > before, timeout=60)
        assert keyed.scheduler.stats["sequences"] == before + 1, "only the authorised request was answered"

        for key in ("wrong", "Bearer s3cret"):
            with pytest.raises(openai.AuthenticationError) as refused:
                client(keyed, key).models.list()
            assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(keyed, "wrong").chat.completions.create(model="x", messages=ask("hi"), max_tokens=2)
        assert [m.id for m in client(keyed, "s3cret").models.list()] == [loaded.model_id]
    finally:
        stop(keyed)


def test_a_negative_or_oversized_body_is_refused_by_the_server(server, monkeypatch):
    port = server.server_address[1]
    [(status, headers, error)] = responses(port, post("/v1/chat/completions", CHAT, {"Content-Length": "-1"}), 1)
    assert status == 400 and headers["connection"] == "close" and error["error"]["type"] == "invalid_request_error"
    assert "Content-Length" in error["error"]["message"]

    monkeypatch.setattr(serve, "MAX_BODY", 64)
    [(status, headers, error)] = responses(port, post("/v1/chat/completions", CHAT), 1)
    assert status == 413 and "over 64 bytes" in error["error"]["message"]
    chunked = b"".join(f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (CHAT[:50], CHAT[50:])) + b"0\r\n\r\n"
    [(status, _, error)] = responses(port, post("/v1/chat/completions", chunked,
                                                {"Transfer-Encoding": "chunked", "Content-Length": None}), 1)
    assert status == 413


# -- the openai client -----------------------------------------------------------------------------

def test_models_health_and_a_chat_completion(server, loaded):
    api = client(server)
    assert [m.id for m in api.models.list()] == [loaded.model_id]
    assert api.models.retrieve(loaded.model_id).id == loaded.model_id
    with urllib.request.urlopen(f"{server.url}/health", timeout=60) as health:
        assert json.loads(health.read()) == {"status": "ok", "model": loaded.model_id}

    reply = api.chat.completions.create(model=loaded.model_id, messages=ask("Who are you?"), temperature=0,
                                        max_tokens=40)
    assert reply.choices[0].message.content == IDENTITY[0][1] and reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    short = api.chat.completions.create(model=loaded.model_id, messages=ask("Who are you?"), temperature=0,
                                        max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2

    prompt, _ = inference.render(loaded.tokenizer, ask("What is your name?"))
    text = api.completions.create(model=loaded.model_id, prompt=prompt, temperature=0, max_tokens=30)
    assert text.object == "text_completion" and text.choices[0].text == IDENTITY[1][1]


def test_streaming_with_usage_and_stop(server, loaded):
    api = client(server)
    chunks = list(api.chat.completions.create(model=loaded.model_id, messages=ask("What is your name?"),
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == IDENTITY[1][1]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 3

    # stop: the answer ends before the first stop string, streamed or not
    whole = IDENTITY[0][1]  # "I am Tiny, a small assistant made by the finetty team."
    reply = api.chat.completions.create(model=loaded.model_id, messages=ask("Who are you?"), temperature=0,
                                        stop=[" small", ","], max_tokens=40)
    assert reply.choices[0].message.content == whole[:whole.index(",")] and reply.choices[0].finish_reason == "stop"
    streamed = api.chat.completions.create(model=loaded.model_id, messages=ask("Who are you?"), temperature=0,
                                           stop="made", max_tokens=40, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == whole[:whole.index("made")]


def test_a_seed_repeats_a_sampled_answer(server, loaded):
    api = client(server)

    def sample(seed):
        return api.chat.completions.create(model=loaded.model_id, messages=ask("Tell me about the sea."),
                                           temperature=2.0, seed=seed, max_tokens=12).choices[0].message.content

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in (1, 2, 3, 4)}) > 1


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"temperature": 9}, "temperature"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "gpt-4"}, "model"), ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
])
def test_what_is_not_implemented_or_wrong_is_refused_by_name(server, loaded, extra, param):
    body = {"model": loaded.model_id, "messages": ask("hi"), "max_tokens": 2, **extra}
    model = body.pop("model")
    messages = body.pop("messages")
    with pytest.raises(openai.APIStatusError) as refused:
        client(server).chat.completions.create(model=model, messages=messages, **body)
    error = refused.value.body
    assert refused.value.status_code == (404 if param == "model" else 400)
    assert error["param"] == param and param in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_a_prompt_longer_than_the_context_is_refused_with_both_lengths(server, loaded):
    context = inference.context_length(loaded)
    with pytest.raises(openai.BadRequestError) as refused:
        client(server).chat.completions.create(model=loaded.model_id, messages=ask("hi " * (context + 50)),
                                               max_tokens=2)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and f"context of {context} tokens" in error["message"]
    tokens = int(error["message"].split("the prompt is ")[1].split(" tokens")[0])
    assert tokens > context


def test_a_client_that_disconnects_stops_its_generation(base):
    server = start(base)
    try:
        port = server.server_address[1]
        stats, changed = server.scheduler.stats, server.scheduler.changed
        for stream in (True, False):
            body = json.dumps({"messages": ask("Who are you?"), "temperature": 0, "max_tokens": 900,
                               "stream": stream}).encode()
            with socket.create_connection(("127.0.0.1", port), timeout=300) as connection:
                connection.sendall(post("/v1/chat/completions", body))
                if stream:
                    assert b"data: " in connection.recv(4096), "the stream began"
                else:
                    with changed:
                        assert changed.wait_for(lambda: server.scheduler.running, timeout=300)
            with changed:  # the socket is closed: its sequence ends at the next step
                assert changed.wait_for(lambda: stats["cancelled"] >= (1 if stream else 2), timeout=300)
            interrupted = server.scheduler.recent[-1]
            assert interrupted.interrupted and interrupted.completion_tokens < 900
    finally:
        stop(server)


def test_eight_concurrent_streams_are_batched_and_each_is_right(loaded):
    server = start(loaded)
    try:
        api = client(server)
        texts: dict[int, str] = {}

        def stream(i):
            question, _ = IDENTITY[i % len(IDENTITY)]
            chunks = api.chat.completions.create(model=loaded.model_id, messages=ask(question), temperature=0,
                                                 max_tokens=40, stream=True)
            texts[i] = "".join(c.choices[0].delta.content or "" for c in chunks)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert texts == {i: IDENTITY[i % len(IDENTITY)][1] for i in range(8)}
        assert server.scheduler.stats["largest_batch"] > 1 and server.scheduler.stats["batches"] < 8
    finally:
        stop(server)


def test_binding_beyond_loopback_needs_an_api_key(identity_run, loaded):
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")
    with pytest.raises(InputError, match="--api-key"):
        serve.APIServer(loaded, "0.0.0.0", 0)
    result = finetty("serve", str(identity_run), "--host", "0.0.0.0", "--port", "0",
                     env={"FINETTY_API_KEY": ""})
    assert result.returncode == 2 and "--api-key" in result.stderr


def test_finetty_serve_answers_a_streaming_request(identity_run):
    process = subprocess.Popen([sys.executable, "-m", "finetty.core.cli", "serve", str(identity_run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "FINETTY_API_KEY": ""}, preexec_fn=default_signals)
    try:
        line = process.stdout.readline()  # "serving run ... at http://127.0.0.1:PORT/v1 (Ctrl-C stops)"
        assert "http://127.0.0.1:" in line, (line, process.stderr.read() if process.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        api = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)
        chunks = api.chat.completions.create(model=identity_run.name, messages=ask("Who made you?"), temperature=0,
                                             stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == IDENTITY[2][1]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()[-4000:]
