"""The server's one generation thread: requests wait in a queue and are answered in turn.

The model is never run by two requests at once (its KV caches and the torch thread pool are
not shared safely), and the event loop never blocks on a forward: each request gets a
`Ticket`, an asyncio queue that the thread fills with the reply's pieces as they come.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from groundup.serve.engine import Engine, Generation, Options


class Ticket:
    """One request's place in the queue and the pieces of its reply: ("text", str) events,
    then ("done", Generation) or ("error", Exception)."""

    def __init__(self, ids: list[int], options: Options, chat: bool) -> None:
        self.ids, self.options, self.chat = ids, options, chat
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.cancelled = threading.Event()

    def emit(self, kind: str, value: Any) -> None:
        """From the worker thread: hand an event to the request's event loop."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled.set()

    def cancel(self) -> None:
        """The client went away: the worker stops this reply at its next token."""
        self.cancelled.set()

    async def stream(self) -> AsyncIterator[tuple[str, Any]]:
        """The events up to and including the last ("done" or "error")."""
        while True:
            kind, value = await self.events.get()
            yield kind, value
            if kind != "text":
                return

    async def result(self) -> Generation:
        """The finished reply (raises the worker's error)."""
        try:
            async for kind, value in self.stream():
                if kind == "error":
                    raise value
                if kind == "done":
                    return value
        finally:
            self.cancel()  # a no-op once done; stops the reply if this request is cancelled
        raise RuntimeError("the generation worker ended without an answer")


class Worker:
    """Runs the tickets one after another on a daemon thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tickets: queue.Queue[Ticket | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="groundup-generate", daemon=True)
        self.thread.start()

    def submit(self, ids: list[int], options: Options, chat: bool) -> Ticket:
        """Queue a reply (call from the event loop); its events come on the ticket."""
        ticket = Ticket(ids, options, chat)
        self.tickets.put(ticket)
        return ticket

    @property
    def waiting(self) -> int:
        return self.tickets.qsize()

    def close(self) -> None:
        self.tickets.put(None)

    def _loop(self) -> None:
        while (ticket := self.tickets.get()) is not None:
            if ticket.cancelled.is_set():
                continue  # its client left while it waited
            try:
                gen = self.engine.reply(
                    ticket.ids, ticket.options, ticket.chat, cancelled=ticket.cancelled.is_set
                )
                for piece in gen:
                    ticket.emit("text", piece)
                ticket.emit("done", gen)
            except Exception as exc:  # reported to that client; the worker goes on
                ticket.emit("error", exc)
