"""`groundup serve RUN`: the model of a run behind an OpenAI-compatible HTTP API.

Everything that can fail is done before the port opens: the extra is installed, the model
loads, the address is free. Then one line says where the API is, and uvicorn serves until
Ctrl-C (which ends the server cleanly, exit code 0).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import socket
import sys
from pathlib import Path

from groundup.errors import ConfigError, DependencyError


def check_serve_extra() -> None:
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise DependencyError(
            f'groundup serve needs {" and ".join(missing)}: pip install "groundup[serve]"'
        )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free one), or a one-line error."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not an address of this machine ({exc})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port (0: any "
            "free one) or stop what uses it"
        ) from None
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    device: str = "auto",
    allow_pickle: bool = False,
    model_name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the model in `run` until interrupted."""
    check_serve_extra()
    if api_key is not None and not api_key.strip():
        raise ConfigError("--api-key is empty; give a key, or leave the option out")
    import uvicorn

    from groundup.serve.app import build_app
    from groundup.serve.engine import Engine

    engine = Engine.load(run, device=device, allow_pickle=allow_pickle, name=model_name)
    sock = bind(host, port)
    app = build_app(engine, api_key=api_key)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    key = "API key required" if api_key else "no API key"
    print(
        f"groundup serve: model '{engine.name}' ({engine.describe()}) at "
        f"http://{shown}:{bound}/v1 ({key}; Ctrl-C stops)",
        flush=True,
    )
    if not is_loopback(host) and api_key is None:
        print(
            f"warning: listening on {host} without an API key: anyone who reaches this "
            "machine can use the model (--api-key KEY)",
            file=sys.stderr,
            flush=True,
        )
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C
        print("groundup serve: stopped", flush=True)
