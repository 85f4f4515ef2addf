"""A language model for people and programs: the engine behind `groundup chat` and the
OpenAI-compatible server of `groundup serve` (FastAPI + uvicorn, the `serve` extra).

`engine` needs only torch; `app`, `schemas`, `errors` and `responses` import FastAPI, so they
are imported only by the server.
"""

from groundup.serve.engine import Engine, Generation, Options

__all__ = ["Engine", "Generation", "Options"]
