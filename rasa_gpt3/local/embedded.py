"""Runs the local backend inside the current process (a daemon thread with its own event loop) or in the foreground.

`ensure_server(state_dir)` starts at most one embedded server per process per state directory and returns it once
it accepts connections. It runs in its own thread and event loop, so it also works from inside a running loop
(Sanic in `rasa run`, the action server): the caller's loop is never used or blocked by the server.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Dict, Optional

from aiohttp import web

from rasa_gpt3.foreground_server import ListenError, serve_app_forever
from rasa_gpt3.local.api.app import create_app
from rasa_gpt3.local.api.backend import BACKEND, DEFAULT_MAX_UPLOAD_BYTES

READY_TIMEOUT = 30.0


class BackendStartError(RuntimeError):
    """The local backend could not start (e.g. the port is taken)."""


class EmbeddedServer:
    """A local backend served from a daemon thread; `base_url` is what the SDK needs."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: Optional[str] = None,
        faults: Optional[str] = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        header_faults: Optional[bool] = None,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self.host, self.port = host, port
        self.app = create_app(
            self.state_dir,
            token=token,
            faults=faults,
            max_upload_bytes=max_upload_bytes,
            header_faults=header_faults,
        )
        self.pid = os.getpid()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._runner: Optional[web.AppRunner] = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, name=f"rasa-gpt3-local:{self.state_dir.name}", daemon=True)

    @property
    def backend(self):
        """The server's Backend (store, fault plan, counters)."""
        return self.app[BACKEND]

    @property
    def base_url(self) -> str:
        """The OpenAI base URL of this server (ends with /v1)."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        """Whether the server thread is serving (in this very process)."""
        serving = self._ready.is_set() and not self._stopped.is_set() and self._thread.is_alive()
        return serving and self.pid == os.getpid()

    def start(self) -> EmbeddedServer:
        """Starts the thread and waits until the server accepts connections; raises BackendStartError."""
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT):
            raise BackendStartError("the local backend did not start within 30 s")
        if self._error is not None:
            raise BackendStartError(f"the local backend could not start on {self.host}:{self.port}: {self._error}")
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, shutdown_timeout=1.0)
            loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as error:  # reported to start()
            self._error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._runner.cleanup())
            loop.close()
            self._stopped.set()

    def stop(self) -> None:
        """Stops serving and the job runner (waits a few seconds at most)."""
        if self._loop is not None and not self._stopped.is_set() and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)


_SERVERS: Dict[Path, EmbeddedServer] = {}
_SERVERS_LOCK = threading.Lock()


def ensure_server(state_dir: os.PathLike) -> EmbeddedServer:
    """The process's embedded server for `state_dir`, started on 127.0.0.1 on a free port if not running."""
    key = Path(state_dir).expanduser().resolve()
    with _SERVERS_LOCK:
        server = _SERVERS.get(key)
        if server is not None and server.running:
            return server
        try:
            server = EmbeddedServer(key).start()
        except OSError as error:
            raise BackendStartError(str(error)) from None
        _SERVERS[key] = server
        return server


def running_server(state_dir: os.PathLike) -> Optional[EmbeddedServer]:
    """The embedded server for `state_dir` if this process runs one, else None."""
    server = _SERVERS.get(Path(state_dir).expanduser().resolve())
    return server if server is not None and server.running else None


def stop_server(state_dir: os.PathLike) -> None:
    """Stops this process's embedded server for `state_dir`, if any (tests; a later client starts a new one)."""
    with _SERVERS_LOCK:
        server = _SERVERS.pop(Path(state_dir).expanduser().resolve(), None)
    if server is not None:
        server.stop()


def serve_forever(
    state_dir: os.PathLike,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: Optional[str] = None,
    faults: Optional[str] = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    on_ready=None,
) -> None:
    """Serves the local backend in the foreground until interrupted (Ctrl-C)."""
    try:
        app = create_app(
            Path(state_dir).expanduser().resolve(), token=token, faults=faults, max_upload_bytes=max_upload_bytes
        )
    except OSError as error:
        raise BackendStartError(str(error)) from None

    try:
        serve_app_forever(lambda: app, host, port, on_ready=on_ready, handler_cancellation=True)
    except ListenError as error:
        raise BackendStartError(str(error)) from None
