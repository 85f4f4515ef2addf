"""`groundup serve`: a real server on a free 127.0.0.1 port, asked through the official openai
client. Its answers are checked against greedy generation done here with the same run (one
torch thread on both sides), and its token counts against our tokenizer's."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from groundup.errors import ConfigError  # noqa: E402
from groundup.finetune.sft import Conversation, Message, encode_prompt, stop_ids  # noqa: E402
from groundup.generate import generate  # noqa: E402
from groundup.models.folders import load_model  # noqa: E402
from tests.test_chat import make_sft_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
KEY = "test-key-123"
BLOCK = 96


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def start_server(run: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m groundup serve RUN --port 0`, and its base URL once it printed it."""
    cmd = [sys.executable, "-m", "groundup", "serve", str(run), "--port", "0", *extra]
    out = log.open("w")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = log.read_text()
        if " at http://" in text:
            url = text.split(" at ", 1)[1].split()[0]
            return proc, url
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the server did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_sft_run(tmp_path_factory.mktemp("serve"), BLOCK)


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    proc, url = start_server(run, log, "--api-key", KEY, "--log-level", "warning")
    yield url
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, log.read_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=server, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def local(run):
    """The same run loaded here: the reference the server's answers must equal."""
    return load_model(run)


def greedy(local, ids: list[int], max_new: int, eos: int | None) -> list[int]:
    out = generate(
        local.model,
        torch.tensor([ids]),
        max_new,
        temperature=0,
        eos_id=eos,
        vocab_limit=local.tokenizer.vocab_size,
    )
    return out[0, len(ids) :].tolist()


def chat_reference(local, text: str) -> tuple[list[int], list[int]]:
    """(prompt ids, generated ids) of a one-message chat, the generated ending at the stop."""
    template = local.meta.get("template", "auto")
    ids = encode_prompt(Conversation([Message("user", text)]), local.tokenizer, template)
    (stop,) = stop_ids(local.tokenizer, template)
    return ids, greedy(local, ids, BLOCK - len(ids), stop)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ---- answers -------------------------------------------------------------------------------
def test_models_lists_the_run(client, run) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [run.name]
    assert client.models.retrieve(run.name).id == run.name


def test_chat_equals_greedy_generation_and_counts_our_tokens(client, run, local) -> None:
    ids, new = chat_reference(local, "hi")
    assert new[-1] == local.tokenizer.eot_id and len(new) > 3  # a reply that stopped
    r = client.chat.completions.create(model=run.name, messages=user("hi"), temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == local.tokenizer.decode(new[:-1])
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == len(ids)
    assert r.usage.completion_tokens == len(new)  # the end-of-turn token is sampled too
    assert r.usage.total_tokens == len(ids) + len(new)


def test_completion_equals_greedy_generation(client, run, local) -> None:
    tok = local.tokenizer
    prompt = "### Instruction:\nname?"
    new = greedy(local, tok.encode(prompt), 7, tok.eot_id)
    r = client.completions.create(model=run.name, prompt=prompt, max_tokens=7, temperature=0)
    eot = new.index(tok.eot_id) if tok.eot_id in new else len(new)
    assert r.choices[0].text == tok.decode(new[:eot])
    assert r.choices[0].finish_reason == ("stop" if eot < len(new) else "length")
    assert r.usage.prompt_tokens == len(tok.encode(prompt))
    assert r.usage.completion_tokens == len(new)
    ids = client.completions.create(
        model=run.name, prompt=tok.encode(prompt), max_tokens=7, temperature=0
    )
    assert ids.choices[0].text == r.choices[0].text  # token ids as the prompt: the same


def test_streamed_chat_joins_to_the_non_streamed_text(client, run) -> None:
    whole = client.chat.completions.create(model=run.name, messages=user("hi"), temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=run.name,
            messages=user("hi"),
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 1  # streamed, not sent whole
    assert "".join(pieces) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    text = client.completions.create(model=run.name, prompt="hello", max_tokens=6, temperature=0)
    stream = client.completions.create(
        model=run.name, prompt="hello", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream) == text.choices[0].text


def test_eight_concurrent_clients_all_get_the_same_answer(client, run) -> None:
    def ask(i: int) -> str:
        if i % 2:  # half of them stream
            stream = client.chat.completions.create(
                model=run.name, messages=user("hi"), temperature=0, stream=True
            )
            return "".join(c.choices[0].delta.content or "" for c in stream)
        r = client.chat.completions.create(model=run.name, messages=user("hi"), temperature=0)
        return r.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert len(answers) == 8 and len(set(answers)) == 1
    assert answers[0] == ask(0)


def test_seeded_sampling_repeats(client, run) -> None:
    def ask(seed: int) -> str:
        r = client.completions.create(
            model=run.name, prompt="hello", max_tokens=12, temperature=1.0, seed=seed
        )
        return r.choices[0].text

    assert ask(5) == ask(5)
    assert len({ask(s) for s in range(4)}) > 1  # the seed does change the sample


def test_stop_sequences_end_the_reply_before_them(client, run) -> None:
    text = (
        client.chat.completions.create(model=run.name, messages=user("hi"), temperature=0)
        .choices[0]
        .message.content
    )
    assert len(text) >= 4
    stop = text[2:4]
    cut = text[: text.find(stop)]
    r = client.chat.completions.create(
        model=run.name, messages=user("hi"), temperature=0, stop=["never-seen", stop]
    )
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < len(text) + 1  # it stopped early
    stream = client.chat.completions.create(
        model=run.name, messages=user("hi"), temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == cut


def test_max_tokens_and_the_context_end_give_length(client, run, local) -> None:
    r = client.chat.completions.create(
        model=run.name, messages=user("hi"), temperature=0, max_tokens=3
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3
    ids, new = chat_reference(local, "hi")
    assert r.choices[0].message.content == local.tokenizer.decode(new[:3])
    # a prompt that leaves two tokens of context: cut there, whatever max_tokens says
    tok = local.tokenizer
    prompt = tok.encode("hello " * 20)[: BLOCK - 2]
    r = client.completions.create(model=run.name, prompt=prompt, max_tokens=10, temperature=0)
    want = greedy(local, prompt, 2, tok.eot_id)
    assert r.choices[0].finish_reason == ("stop" if want[-1] == tok.eot_id else "length")
    assert r.usage.completion_tokens == len(want) and r.usage.prompt_tokens == BLOCK - 2


# ---- refusals ------------------------------------------------------------------------------
def test_the_api_key_is_required(server, run) -> None:
    for key in ("wrong-key", ""):
        bad = openai.OpenAI(api_key=key or "x", base_url=server, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            bad.models.list()
        assert info.value.status_code == 401
    resp = httpx.post(
        f"{server}/chat/completions", json={"model": run.name, "messages": user("hi")}
    )
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def post(server: str, body: bytes | dict, path: str = "chat/completions") -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    return httpx.post(f"{server}/{path}", content=content, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"max_tokens": -1}, 400, "max_tokens"),
        (b'{"model": "chatty", "messages": [', 400, None),
        ({"model": "no-such-model"}, 404, "model"),
        ({"messages": None}, 400, "messages"),
        ({"temperature": "hot"}, 400, "temperature"),
        ({"max_tokens": "5"}, 400, "max_tokens"),
        ({"n": 2}, 400, "n"),
        ({"stream": 1}, 400, "stream"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, 400, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
        ({"temprature": 0.5}, 400, "temprature"),
        ({"messages": user("long " * 40)}, 400, "messages"),
        ({"messages": [*user("hi"), {"role": "assistant", "content": "x"}]}, 400, "messages"),
    ],
    ids=[
        "negative-max-tokens",
        "malformed-json",
        "unknown-model",
        "missing-messages",
        "temperature-type",
        "max-tokens-string",
        "n-2",
        "stream-int",
        "bad-role",
        "no-content",
        "unknown-field",
        "context-exceeded",
        "ends-with-assistant",
    ],
)
def test_bad_requests_get_openai_shaped_errors(server, run, body, status, param) -> None:
    if isinstance(body, dict):
        body = {"model": run.name, "messages": user("hi"), **body}
        body = {k: v for k, v in body.items() if v is not None}
    resp = post(server, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"] and "\n" not in error["message"]


def test_the_client_raises_its_own_error_classes(client, run) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=run.name, prompt="x", max_tokens=-1)
    resp = post(server=str(client.base_url).rstrip("/"), body=b"{}", path="completions")
    assert resp.status_code == 400 and resp.json()["error"]["param"] in ("model", "prompt")


def test_a_bad_run_is_one_line_and_exit_2(tmp_path) -> None:
    cmd = [sys.executable, "-m", "groundup", "serve", str(tmp_path / "nothing"), "--port", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nothing" in lines[0]
    assert "serve" not in done.stdout  # the port never opened


def test_a_busy_port_is_refused_before_serving() -> None:
    from groundup.jobs.serve import bind

    taken = bind("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="choose another --port"):
            bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    with pytest.raises(ConfigError, match="--port must be in"):
        bind("127.0.0.1", 70000)


def test_without_a_key_no_header_is_needed(run) -> None:
    from fastapi.testclient import TestClient

    from groundup.serve.app import build_app
    from groundup.serve.engine import Engine

    with TestClient(build_app(Engine.load(run))) as http:
        assert http.get("/v1/models").json()["data"][0]["id"] == run.name
        r = http.post("/v1/completions", json={"model": run.name, "prompt": "hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
        assert http.get("/v2/nothing").json()["error"]["message"].startswith("GET /v2/nothing")


def test_the_default_host_is_loopback() -> None:
    import argparse

    from groundup.cli_serve import add_serve_args

    parser = argparse.ArgumentParser()
    add_serve_args(parser)
    args = parser.parse_args(["some-run"])
    assert args.host == "127.0.0.1" and args.port == 8000
    assert socket.inet_aton(args.host)  # an address, not a name to resolve
