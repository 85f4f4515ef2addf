"""`groundup chat`: the terminal session through a real pseudo-terminal, and the conversation
logic (history in the template, dropping the oldest turns, continuation mode) with scripted
input. Replies are checked against greedy generation done here with the same run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from groundup.config import from_dict
from groundup.data.tokenizers import Tokenizer
from groundup.errors import DataError
from groundup.finetune.sft import Conversation, Message, encode_prompt, stop_ids
from groundup.generate import generate
from groundup.jobs.chat import ChatSession, chat_loop
from groundup.jobs.finetune import FinetuneConfig, run_finetune
from groundup.models.blocks import KVCache
from groundup.models.folders import load_model, save_model_dir
from groundup.models.gpt import GPT, GPTConfig
from groundup.serve.engine import Engine, Options

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCK = 160


def make_sft_run(root: Path, block: int) -> Path:
    """A tiny GPT (bytes tokenizer) tuned for a few steps on two answers: enough that greedy
    replies are short runs of letters that end with the end-of-text token."""
    tok = Tokenizer.train(None, kind="bytes")
    torch.manual_seed(0)
    cfg = GPTConfig(
        n_layer=2, n_head=2, n_embd=64, block_size=block, vocab_size=tok.vocab_size, dropout=0.0
    )
    save_model_dir(root / "base" / "model", GPT(cfg), tok)
    rows = [
        {"prompt": "hi", "response": "hello there"},
        {"prompt": "name?", "response": "groundup"},
    ]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 4), encoding="utf-8")
    config = {
        "run_dir": str(root / "chatty"),
        "base": {"path": str(root / "base")},
        "task": "sft",
        "method": "full",
        "data": {"train": str(data)},
        "optim": {"name": "adamw", "lr": 1e-2},
        "train": {"max_steps": 25, "batch_size": 8, "device": "cpu", "precision": "fp32"},
    }
    run_finetune(None, config=from_dict(FinetuneConfig, config), verbose=0)
    return root / "chatty"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """(a base GPT folder, an SFT run tuned from it for a few steps): greedy replies are short
    runs of letters ending with the end-of-text token."""
    root = tmp_path_factory.mktemp("chat")
    return root / "base", make_sft_run(root, BLOCK)


def greedy_reply(run: Path, messages: list[Message], max_new: int = 40) -> str:
    """What the model answers at temperature 0, computed without the chat code."""
    tm = load_model(run)
    template = tm.meta.get("template", "auto")
    ids = encode_prompt(Conversation(messages), tm.tokenizer, template)
    (stop,) = stop_ids(tm.tokenizer, template)
    out = generate(
        tm.model,
        torch.tensor([ids]),
        max_new,
        temperature=0,
        eos_id=stop,
        vocab_limit=tm.tokenizer.vocab_size,
    )
    new = out[0, len(ids) :].tolist()
    return tm.tokenizer.decode(new[: new.index(stop)] if stop in new else new)


class Script:
    """Lines to type, then end of input; everything written is kept."""

    def __init__(self, *lines: str) -> None:
        self.lines, self.out = list(lines), []

    def read(self, prompt: str) -> str:
        self.out.append(prompt)
        if not self.lines:
            raise EOFError
        line = self.lines.pop(0)
        self.out.append(line + "\n")
        return line

    def write(self, text: str) -> None:
        self.out.append(text)

    def text(self) -> str:
        return "".join(self.out)


CUT = " [cut: --max-new-tokens]"  # the chat's note on a reply that max_new_tokens ended


def replies(transcript: str) -> list[str]:
    parts = transcript.split("model> ")[1:]
    return [p.split("\nyou> ")[0].removesuffix(CUT) for p in parts]


GREEDY = Options(max_new_tokens=40, temperature=0)


# ---- the terminal --------------------------------------------------------------------------
def test_chat_in_a_terminal_streams_keeps_history_resets_and_quits(runs) -> None:
    pexpect = pytest.importorskip("pexpect")
    _, run = runs
    first = greedy_reply(run, [Message("user", "hi")])
    second = greedy_reply(
        run, [Message("user", "hi"), Message("assistant", first), Message("user", "name?")]
    )
    assert first and second
    env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1"}
    argv = ["-m", "groundup", "chat", str(run), "--temperature", "0", "--max-new-tokens", "40"]
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=90)
    try:
        child.expect("SFT")  # the banner says what kind of model this is
        child.expect("you> ")

        def say(text: str) -> str:
            child.sendline(text)
            child.expect_exact(text)  # the terminal's echo of what was typed
            child.expect_exact("model> ")
            child.expect_exact("you> ")
            return child.before.replace("\r\n", "\n").strip("\n").removesuffix(CUT)

        assert say("hi") == first
        assert say("name?") == second  # answered with the first exchange in the prompt
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect_exact("you> ")
        assert say("hi") == first  # no history any more
        child.sendline("/help")
        child.expect_exact("/system TEXT")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_ctrl_d_leaves_with_exit_0(runs) -> None:
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "TERM": "dumb", "OMP_NUM_THREADS": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "groundup", "chat", str(runs[1])],
        env=env,
        encoding="utf-8",
        timeout=90,
    )
    child.expect_exact("you> ")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


# ---- the conversation ----------------------------------------------------------------------
def test_commands_and_the_system_prompt(runs) -> None:
    _, run = runs
    script = Script("/help", "/system be brief", "hi", "/system", "/nonsense", "//hi", "/quit", "x")
    chat_loop(ChatSession(Engine.load(run), GREEDY), script.read, script.write)
    text = script.text()
    assert "/reset" in text and "(system prompt set)" in text and "(system prompt removed)" in text
    assert "(unknown command /nonsense; /help lists them)" in text
    with_system = greedy_reply(run, [Message("system", "be brief"), Message("user", "hi")])
    # the system prompt is gone by then; "//" sends a message that starts with "/"
    history = [Message("user", "hi"), Message("assistant", with_system)]
    slash = greedy_reply(run, [*history, Message("user", "/hi")])
    assert replies(text) == [with_system, slash]
    assert script.lines == ["x"]  # /quit ended it


def test_the_oldest_turns_are_dropped_once_the_context_is_full(runs) -> None:
    _, run = runs
    engine = Engine.load(run)
    options = Options(max_new_tokens=20, temperature=0)
    session = ChatSession(engine, options)
    messages = [f"message {i} " + "abc" * 6 for i in range(5)]
    script = Script(*messages, "z" * 200)
    chat_loop(session, script.read, script.write)
    text = script.text()
    assert text.count("oldest turns are dropped") == 1  # said once
    assert "that message is" in text and "shorten it" in text  # the 200-character one
    assert len(replies(text)) == 5  # every message was answered, none after the refused one
    # the kept history is the newest turns, and one turn more would not have fitted
    kept = session.history
    assert 0 < len(kept) < 2 * len(messages) and kept[-2].content == messages[-1]
    template = load_model(run).meta.get("template", "auto")
    fits = encode_prompt(Conversation(kept), engine.tokenizer, template)
    assert len(fits) <= BLOCK - 20
    assert [m.role for m in kept] == ["user", "assistant"] * (len(kept) // 2)


def test_a_base_model_continues_each_message_on_its_own(runs) -> None:
    base, _ = runs
    tm = load_model(base)
    tok = tm.tokenizer
    script = Script("The list", "/system x", "The list")
    chat_loop(ChatSession(Engine.load(base), GREEDY), script.read, script.write)
    text = script.text()
    assert "continuation mode" in text and "(no system prompt in continuation mode)" in text
    ids = tok.encode("The list")
    out = generate(
        tm.model,
        torch.tensor([ids]),
        40,
        temperature=0,
        eos_id=tok.eot_id,
        vocab_limit=tok.vocab_size,
    )[0, len(ids) :].tolist()
    want = tok.decode(out[: out.index(tok.eot_id)] if tok.eot_id in out else out)
    got = replies(text)
    assert len(got) == 2 and got[0] == got[1]  # no history: the same message, the same reply
    assert got[0] == want


def test_seeds_differ_per_reply_and_repeat_per_session(runs) -> None:
    _, run = runs
    engine = Engine.load(run)
    sampled = Options(max_new_tokens=12, temperature=1.5, seed=3)

    def session_replies() -> list[str]:
        script = Script("hi", "/reset", "hi", "/reset", "hi")
        chat_loop(ChatSession(engine, sampled), script.read, script.write)
        return replies(script.text())

    a = session_replies()
    assert a == session_replies()  # the same session again: the same replies
    assert len(set(a)) > 1  # reply n is sampled with seed + n


# ---- the engine both share: stops, holds, ends ---------------------------------------------
class Scripted(torch.nn.Module):
    """A stand-in model that says `script` (token ids), whatever the prompt: each forward's
    last logits are one-hot on the next token of the script."""

    def __init__(self, script: list[int], vocab: int, block: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.i = script, 0
        self.config = SimpleNamespace(block_size=block, vocab_size=vocab)

    def new_kv_cache(self, max_len: int) -> KVCache:
        return KVCache(1, max_len)

    def forward(self, idx: torch.Tensor, kv_cache: KVCache | None = None) -> torch.Tensor:
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        logits = torch.zeros(idx.size(0), idx.size(1), self.config.vocab_size)
        logits[:, -1, self.script[min(self.i, len(self.script) - 1)]] = 10.0
        self.i += 1
        return logits


def scripted(text: str, template: str = "plain", block: int = 64, end: bool = True) -> Engine:
    tok = Tokenizer.train(None, kind="bytes")
    script = tok.encode(text) + ([tok.eot_id] if end else [])
    return Engine(Scripted(script, tok.vocab_size, block), tok, True, template, "s", "here")


def pieces(engine: Engine, options: Options, chat: bool = True) -> tuple[list[str], object]:
    gen = engine.reply(engine.text_ids("hi"), options, chat=chat)
    return list(gen), gen


def test_a_stop_string_never_shows_not_even_in_part() -> None:
    engine = scripted("one two END three")
    got, gen = pieces(engine, Options(max_new_tokens=40, temperature=0, stop=("END", "xyz")))
    assert "".join(got) == "one two " == gen.text and gen.finish_reason == "stop"
    assert not any("E" in p for p in got)  # "E" waited until "END" was known
    assert gen.completion_tokens == len("one two END")  # it stopped at the D


def test_a_prefix_of_a_stop_string_that_is_not_one_is_given_out() -> None:
    engine = scripted("ab ENx")
    got, gen = pieces(engine, Options(max_new_tokens=40, temperature=0, stop=("END",)))
    assert "".join(got) == "ab ENx" and gen.finish_reason == "stop"  # ended by end-of-text
    assert got[-1] == "ENx"  # held while it could still become END


def test_multi_byte_characters_wait_for_their_last_byte() -> None:
    engine = scripted("día €")
    got, gen = pieces(engine, Options(max_new_tokens=40, temperature=0))
    assert "".join(got) == "día €" and all("\ufffd" not in p for p in got)
    assert gen.completion_tokens == len("día €".encode()) + 1  # bytes, then end-of-text


def test_a_marker_the_tokenizer_splits_ends_the_turn_as_text() -> None:
    engine = scripted("fine<|im_end|>more", template="chatml", end=False)
    got, gen = pieces(engine, Options(max_new_tokens=40, temperature=0))
    assert "".join(got) == "fine" and gen.finish_reason == "stop"
    continued, _ = pieces(
        scripted("fine<|im_end|>more", end=False),
        Options(max_new_tokens=14, temperature=0),
        chat=False,
    )
    assert "".join(continued) == "fine<|im_end|>"  # plain text: the marker means nothing


def test_max_new_tokens_and_the_context_end_cut_with_length() -> None:
    got, gen = pieces(scripted("abcdefgh"), Options(max_new_tokens=3, temperature=0))
    assert "".join(got) == "abc" and gen.finish_reason == "length" and not gen.context_full
    engine = scripted("abcdefgh", block=4)  # the prompt "hi" leaves 2 tokens of context
    got, gen = pieces(engine, Options(max_new_tokens=30, temperature=0))
    assert "".join(got) == "ab" and gen.finish_reason == "length" and gen.context_full
    with pytest.raises(DataError, match="shorten it"):
        engine.reply(engine.text_ids("long prompt"), GREEDY, chat=True)


def test_a_cancelled_reply_stops_at_the_next_token() -> None:
    engine = scripted("abcdefgh")
    calls = iter(range(100))
    gen = engine.reply(engine.text_ids("hi"), GREEDY, True, cancelled=lambda: next(calls) >= 2)
    assert "".join(gen) == "abc" and gen.finish_reason == "cancelled"
