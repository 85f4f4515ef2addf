"""`groundup chat RUN`: talk to a model in the terminal, its replies streamed as they come.

An SFT run keeps the conversation in the chat template it was trained on. When the conversation
outgrows the model's context (block_size), the oldest turns are dropped (said once) until the
prompt leaves room for a reply: max_new_tokens, or a quarter of the context if that is less (the
reply may run on into whatever else is free). A base language model has no turns: each message
is continued as plain text, on its own.

The prompt is plain `input()`, with readline's line editing and history where Python has it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from groundup.errors import DataError
from groundup.serve.engine import Engine, Generation, Options

HELP = """commands:
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt; /system alone removes it
  /help          this list
  /quit          leave (Ctrl-D too); Ctrl-C stops a reply
a line starting with // sends the rest of it starting with /"""
YOU, MODEL = "you> ", "model> "


class ChatSession:
    """The conversation so far and how each new message is put to the model."""

    def __init__(self, engine: Engine, options: Options, system: str | None = None) -> None:
        self.engine, self.options = engine, options
        self.system = system
        self.history: list = []  # Messages: user, assistant, user, ...
        self.turns = 0  # replies so far (each gets its own seed)
        self.trimmed = False  # the "oldest turns are dropped" notice was given

    def reset(self) -> None:
        self.history = []

    def prompt(self, text: str) -> tuple[list[int], str | None]:
        """The token ids to answer `text` with, and a notice to print (or None)."""
        if not self.engine.chat:
            return self.engine.text_ids(text), None
        from groundup.finetune.sft import Message

        block = self.engine.block_size
        reserve = min(self.options.max_new_tokens, block // 4)  # room kept for the reply
        head = [Message("system", self.system)] if self.system else []
        turns = [*self.history, Message("user", text)]
        dropped = False
        ids = self.engine.chat_ids(head + turns)
        while len(ids) + reserve > block and len(turns) > 1:
            turns = turns[2:]  # the oldest user message and its reply
            dropped = True
            ids = self.engine.chat_ids(head + turns)
        if len(ids) >= block:
            raise DataError(
                f"that message is {len(ids)} tokens with the template and the model reads "
                f"{block}: shorten it"
            )
        notice = None
        if dropped:
            self.history = turns[:-1]
            if not self.trimmed:
                self.trimmed = True
                notice = (
                    f"(the conversation is longer than the model's context of {block} tokens: "
                    "the oldest turns are dropped from now on)"
                )
        return ids, notice

    def answer(self, text: str) -> tuple[Generation, str | None]:
        """A reply to `text`, ready to iterate; `keep` it once it has been read in full."""
        ids, notice = self.prompt(text)
        seed = self.options.seed
        options = replace(self.options, seed=None if seed is None else seed + self.turns)
        self.turns += 1
        return self.engine.reply(ids, options, chat=self.engine.chat), notice

    def keep(self, text: str, gen: Generation) -> None:
        if self.engine.chat:
            from groundup.finetune.sft import Message

            self.history += [Message("user", text), Message("assistant", gen.text)]


def banner(engine: Engine) -> str:
    head = f"groundup chat: {engine.name} ({engine.describe()})."
    if not engine.chat:
        head += (
            "\ncontinuation mode: a base language model has no turns, so each message is "
            "continued as plain text, with no history (fine-tune it with task: sft to chat)."
        )
    return f"{head}\n/help lists the commands; /quit or Ctrl-D leaves."


def command(session: ChatSession, line: str, write: Callable[[str], None]) -> bool:
    """Run a /command; False when it ends the chat."""
    name, _, arg = line.partition(" ")
    if name in ("/quit", "/exit"):
        return False
    if name == "/help":
        write(HELP + "\n")
    elif name == "/reset":
        session.reset()
        write("(conversation cleared)\n")
    elif name == "/system":
        if not session.engine.chat:
            write("(no system prompt in continuation mode)\n")
        else:
            session.system = arg.strip() or None
            write("(system prompt set)\n" if session.system else "(system prompt removed)\n")
    else:
        write(f"(unknown command {name}; /help lists them)\n")
    return True


def reply(session: ChatSession, text: str, write: Callable[[str], None]) -> None:
    """Stream the model's answer to `text`; an interrupted one is not kept."""
    try:
        gen, notice = session.answer(text)
    except DataError as exc:
        write(f"({exc})\n")
        return
    if notice:
        write(notice + "\n")
    write(MODEL)
    pieces = iter(gen)
    try:
        for piece in pieces:
            write(piece)
    except KeyboardInterrupt:
        pieces.close()  # type: ignore[attr-defined]
        write(" [interrupted]\n")
        return
    if gen.finish_reason == "length":
        why = "the context is full" if gen.context_full else "--max-new-tokens"
        write(f" [cut: {why}]")
    write("\n")
    session.keep(text, gen)


def chat_loop(
    session: ChatSession,
    read: Callable[[str], str] = input,
    write: Callable[[str], None] | None = None,
) -> None:
    """Read messages and commands until /quit or end of input."""
    write = write or _stdout
    write(banner(session.engine) + "\n")
    while True:
        try:
            line = read(YOU)
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(/quit or Ctrl-D leaves)\n")
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            if not command(session, text, write):
                return
            continue
        reply(session, text[1:] if text.startswith("//") else text, write)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run_chat(
    run: str | Path,
    options: Options,
    system: str | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
) -> None:
    """An interactive chat with the model in `run` on this terminal."""
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    engine = Engine.load(run, device=device, allow_pickle=allow_pickle)
    chat_loop(ChatSession(engine, options, system))
