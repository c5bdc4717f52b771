"""A Rasa-compatible NLU server that parses many messages at once: `POST /model/parse` on a trained Rasa model.

Rasa core reaches it through `endpoints.yml` (`nlu: url: http://HOST:PORT`), the deployment Rasa documents as an
external NLU server. Each request runs the model's NLU pipeline (`MessageProcessor.parse_message`, what Rasa's own
`/model/parse` runs) in a pool of `threads` worker threads; the aiohttp event loop only waits. The GPT components
spend a message's time waiting on a socket, which releases the GIL, so messages overlap there.

Every request is answered within `timeout` seconds: when the pipeline (or the queue in front of the pool) takes
longer, or raises, the answer is `fallback_intent` at confidence 0 with the text kept (rasa_gpt3.nlu_server.fallback)
and one log line without the text. The default timeout is the GPT components' own budgets added up (their `timeout`
config, retry included) plus 0.5 s for the rest of the pipeline, so a component that gives up in time is never cut.

Routes (Rasa's shapes): `POST /model/parse` {"text": ..., "message_id": ...} -> the parse result; `GET /` -> a
greeting; `GET /status` -> the model, the budget and what is in flight. With a token, requests need `?token=T`
(Rasa's convention) or `"token": "T"` in the JSON body (what Rasa 3.6's interpreter sends).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from aiohttp import web

from rasa_gpt3.foreground_server import ListenError, serve_app_forever
from rasa_gpt3.nlu_server.fallback import DEFAULT_FALLBACK_INTENT, fallback_parse

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 32
# what the pipeline needs besides the GPT components' calls (tokenizer, featurizers, DIET on two cores)
PIPELINE_MARGIN = 0.5
# a pipeline without GPT components has no budget of its own to derive the deadline from
DEFAULT_TIMEOUT = 2.5
GPT3_COMPONENT_MODULE = "rasa_gpt3."


class NLUServerError(RuntimeError):
    """The server cannot start (no model, a model that does not load, a port in use); one line for the user."""


def gpt3_budget(agent: Any) -> Optional[float]:
    """Seconds the model's GPT components may take per message together (their `timeout`s), None without any."""
    schema = agent.processor.model_metadata.predict_schema
    budgets = []
    for node in schema.nodes.values():
        component = node.uses
        if not component.__module__.startswith(GPT3_COMPONENT_MODULE):
            continue
        defaults = component.get_default_config() if hasattr(component, "get_default_config") else {}
        timeout = {**defaults, **(node.config or {})}.get("timeout")
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            budgets.append(float(timeout))
    return sum(budgets) if budgets else None


def load_agent(model: Path) -> Any:
    """Loads the Rasa model at `model` (an archive, or a directory: its newest archive) as `rasa run -m` does."""
    from rasa.core.agent import Agent
    from rasa.exceptions import ModelNotFound
    from rasa.model import get_local_model

    try:
        archive = get_local_model(str(model))
    except ModelNotFound as error:
        raise NLUServerError(f"no Rasa model at {model}: {error}") from None
    try:
        return Agent.load(archive)
    except Exception as error:  # Rasa raises many kinds for an archive it cannot load; the user needs one line
        raise NLUServerError(f"cannot load the Rasa model {archive}: {type(error).__name__}: {error}") from None


class NLUServer:
    """The NLU pipeline of one loaded Rasa model, run on a thread pool behind an aiohttp app."""

    def __init__(
        self,
        agent: Any,
        *,
        threads: int = DEFAULT_THREADS,
        timeout: Optional[float] = None,
        token: Optional[str] = None,
        fallback_intent: str = DEFAULT_FALLBACK_INTENT,
    ) -> None:
        if threads < 1:
            raise NLUServerError("threads must be at least 1")
        if timeout is not None and timeout <= 0:
            raise NLUServerError("timeout must be a positive number of seconds")
        self.agent = agent
        self.threads = threads
        budget = gpt3_budget(agent)
        self.timeout = (
            float(timeout)
            if timeout is not None
            else (budget + PIPELINE_MARGIN if budget is not None else DEFAULT_TIMEOUT)
        )
        self.token = token or None
        self.fallback_intent = fallback_intent
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rasa-gpt3-nlu")
        self._loops = threading.local()
        self._in_flight = 0
        self._counts: Dict[str, int] = {"parsed": 0, "fallback": 0}

    @property
    def model_file(self) -> str:
        """The archive the server parses with."""
        return str(self.agent.processor.model_filename)

    # ------------------------------------------------------------------ the pipeline, on a worker thread

    def _thread_loop(self) -> asyncio.AbstractEventLoop:
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop

    def _parse_blocking(self, text: str, sender_id: Optional[str]) -> Dict[str, Any]:
        """Runs the NLU pipeline on one message; called on a pool thread, each with an event loop of its own."""
        from rasa.core.channels.channel import UserMessage

        # MessageProcessor.parse_message never awaits anything without an NLU endpoint: it runs the graph
        return self._thread_loop().run_until_complete(
            self.agent.processor.parse_message(UserMessage(text, sender_id=sender_id))
        )

    def start_threads(self) -> None:
        """Starts every pool thread with its event loop now, so the first burst of messages does not pay for it."""
        ready = threading.Barrier(self.threads)

        def start() -> None:
            self._thread_loop()
            ready.wait(timeout=30)

        for future in [self._pool.submit(start) for _ in range(self.threads)]:
            future.result()

    async def parse(self, text: str, sender_id: Optional[str] = None) -> Dict[str, Any]:
        """The parse result of `text` within `timeout` seconds, or the fallback parse."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        self._in_flight += 1
        try:
            # wait_for cancels the pool's future on timeout: a message still queued is then never parsed
            result = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._parse_blocking, text, sender_id), self.timeout
            )
        except asyncio.TimeoutError:
            return self._fallback(text, "timeout", f"no parse within {self.timeout:g} s")
        except Exception as error:  # a component that raises must not cost the conversation its answer
            return self._fallback(text, "pipeline_error", f"the pipeline raised {type(error).__name__}")
        finally:
            self._in_flight -= 1
        self._counts["parsed"] += 1
        logger.debug("parsed a message in %.1f ms", (time.monotonic() - started) * 1000)
        return result

    def _fallback(self, text: str, outcome: str, why: str) -> Dict[str, Any]:
        self._counts["fallback"] += 1
        logger.warning("NLU server: %s; answering %s (%s)", why, self.fallback_intent, outcome)
        return fallback_parse(text, outcome, fallback_intent=self.fallback_intent, source="server", budget=self.timeout)

    # ------------------------------------------------------------------ HTTP

    def _authorised(self, request: web.Request, body: Dict[str, Any]) -> bool:
        if self.token is None:
            return True
        given = request.query.get("token") or body.get("token")
        return isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode())

    async def handle_parse(self, request: web.Request) -> web.Response:
        """POST /model/parse."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "BadRequest", "The request body must be a JSON object with a `text`.")
        if not self._authorised(request, body):
            return _error(401, "NotAuthenticated", 'User is not authenticated: pass ?token= or "token" in the body.')
        text = body.get("text")
        if not isinstance(text, str):
            return _error(
                400,
                "BadRequest",
                "No text message defined in request_body. Add text message to request "
                "body in order to obtain the intent and extracted entities.",
            )
        sender_id = body.get("message_id") if isinstance(body.get("message_id"), str) else None
        return web.json_response(await self.parse(text, sender_id))

    async def handle_root(self, request: web.Request) -> web.Response:
        """GET /: what Rasa's server answers, so health checks written for it work."""
        import rasa

        return web.Response(text=f"Hello from the rasa_gpt3 NLU server (Rasa {rasa.__version__})")

    async def handle_status(self, request: web.Request) -> web.Response:
        """GET /status: model, budget, threads, messages in flight and counts."""
        if self.token is not None and not self._authorised(request, {}):
            return _error(401, "NotAuthenticated", "User is not authenticated: pass ?token=.")
        return web.json_response(
            {
                "model_file": self.model_file,
                "model_id": self.agent.processor.model_metadata.model_id,
                "timeout": self.timeout,
                "threads": self.threads,
                "in_flight": self._in_flight,
                **self._counts,
            }
        )

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/model/parse", self.handle_parse)
        app.router.add_get("/", self.handle_root)
        app.router.add_get("/status", self.handle_status)
        app.on_cleanup.append(self._shutdown)
        return app

    async def _shutdown(self, app: web.Application) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _error(status: int, reason: str, message: str) -> web.Response:
    """An error in the shape of Rasa's server (rasa.server.ErrorResponse)."""
    import rasa

    body = {
        "version": rasa.__version__,
        "status": "failure",
        "message": message,
        "reason": reason,
        "details": {},
        "help": None,
        "code": status,
    }
    return web.json_response(body, status=status)


def serve(server: NLUServer, *, host: str = "127.0.0.1", port: int = 5006, on_ready=None) -> None:
    """Serves `server` in the foreground until interrupted; `on_ready(port)` once the port is bound."""

    try:
        serve_app_forever(server.app, host, port, on_ready=on_ready, before_start=server.start_threads)
    except ListenError as error:
        raise NLUServerError(str(error)) from None
