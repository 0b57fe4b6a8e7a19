"""``finetty serve``: an OpenAI-compatible API, talked to with a real HTTP client (http.client) on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from finetty.core.results import inference
from finetty.core.results import serve
from finetty.core.errors import InputError

from .conftest import REPO, default_signals, finetty
from .results_runs import IDENTITY


@pytest.fixture(scope="module")
def loaded(identity_run):
    return inference.load(identity_run)


def start(loaded, **options):
    server = serve.APIServer(loaded, "127.0.0.1", 0, **options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def server(loaded):
    server = start(loaded)
    yield server
    server.shutdown()
    server.server_close()


def request(server_or_port, method, path, body=None, headers=None):
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.server_address[1]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    payload = json.dumps(body).encode() if body is not None else None
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json", **(headers or {})})
    return connection, connection.getresponse()


def read_events(response) -> list:
    """Server-sent events from a streaming response, as parsed JSON (and the final "[DONE]")."""
    found = []
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: "):]
            found.append(data if data == "[DONE]" else json.loads(data))
    return found


def test_models_lists_the_run(server, identity_run):
    connection, response = request(server, "GET", "/v1/models")
    body = json.loads(response.read())
    assert response.status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [identity_run.name]
    connection.close()


def test_chat_completion(server, identity_run):
    connection, response = request(server, "POST", "/v1/chat/completions", {
        "model": identity_run.name, "temperature": 0, "max_tokens": 40,
        "messages": [{"role": "user", "content": "Who are you?"}]})
    body = json.loads(response.read())
    assert response.status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": IDENTITY[0][1]}
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["completion_tokens"] > 0 and usage["total_tokens"] == usage["prompt_tokens"] + usage[
        "completion_tokens"]
    connection.close()

    connection, response = request(server, "POST", "/v1/chat/completions", {
        "temperature": 0, "max_tokens": 2, "messages": [{"role": "user", "content": "Who are you?"}]})
    body = json.loads(response.read())
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 2
    connection.close()


def test_streaming_chat_completion(server, identity_run):
    connection, response = request(server, "POST", "/v1/chat/completions", {
        "model": identity_run.name, "stream": True, "temperature": 0,
        "messages": [{"role": "user", "content": "What is your name?"}]})
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    events = read_events(response)
    connection.close()
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == identity_run.name for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == IDENTITY[1][1] and len(chunks) > 3


def test_bad_requests_get_openai_style_errors(server):
    for body, status, param in (({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
                                ({"messages": []}, 400, "messages"),
                                ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages"),
                                ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, 400,
                                 "temperature")):
        connection, response = request(server, "POST", "/v1/chat/completions", body)
        error = json.loads(response.read())["error"]
        assert response.status == status and error["param"] == param and error["message"]
        connection.close()
    connection, response = request(server, "GET", "/v1/nothing")
    assert response.status == 404 and "error" in json.loads(response.read())
    connection.close()


def test_an_api_key_is_checked_on_every_request(loaded):
    server = start(loaded, api_key="s3cret")
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            for method, path, body in (("GET", "/v1/models", None),
                                       ("POST", "/v1/chat/completions",
                                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})):
                connection, response = request(server, method, path, body, headers)
                assert response.status == 401, (headers, path)
                assert json.loads(response.read())["error"]["code"] == "invalid_api_key"
                connection.close()
        connection, response = request(server, "POST", "/v1/chat/completions",
                                       {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                                       {"Authorization": "Bearer s3cret"})
        assert response.status == 200
        connection.close()
    finally:
        server.shutdown()
        server.server_close()


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
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        connection, response = request(port, "POST", "/v1/chat/completions", {
            "stream": True, "temperature": 0, "messages": [{"role": "user", "content": "Who made you?"}]})
        events = read_events(response)
        connection.close()
        text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
        assert text == IDENTITY[2][1] and events[-1] == "[DONE]"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, process.stderr.read()[-4000:]  # (it once ended with SIGABRT: say why if again)
