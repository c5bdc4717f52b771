"""Serving an aiohttp app in the foreground until Ctrl-C: `rasa-gpt3 local serve` and `rasa-gpt3 nlu serve`."""

from __future__ import annotations

import asyncio
from typing import Callable, Optional

from aiohttp import web


class ListenError(OSError):
    """The port could not be bound; the message says which and why, in one line."""


def serve_app_forever(
    make_app: Callable[[], web.Application],
    host: str,
    port: int,
    *,
    on_ready: Optional[Callable[[int], None]] = None,
    before_start: Optional[Callable[[], None]] = None,
    handler_cancellation: bool = False,
) -> None:
    """Runs the app built by `make_app` on host:port until interrupted; `on_ready(port)` once the port is bound."""

    async def main() -> None:
        if before_start is not None:
            before_start()
        runner = web.AppRunner(make_app(), handler_cancellation=handler_cancellation, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as error:
            await runner.cleanup()
            raise ListenError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        if on_ready is not None:
            on_ready(runner.addresses[0][1])
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
