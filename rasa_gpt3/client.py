"""The only module that talks to the openai SDK: client factories and one-line error descriptions.

With an API key (and no RASA_GPT3_LOCAL=1) the clients go to OpenAI, or to `OPENAI_BASE_URL` (Azure OpenAI, any
compatible server). Without one they go to the embedded local backend, started on 127.0.0.1 on a free port the
first time a client for that state directory is made in this process.
"""
from __future__ import annotations

import asyncio
import os
import re
import threading
import weakref
from typing import Dict, Optional, Tuple

import openai

from rasa_gpt3.settings import Settings

LOCAL_API_KEY = "local"

_ASYNC_CLIENTS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[Tuple, openai.AsyncOpenAI]]" = (
    weakref.WeakKeyDictionary()
)
_ASYNC_LOCK = threading.Lock()


def local_base_url(state_dir: os.PathLike) -> str:
    """The base URL of this process's embedded local backend for `state_dir` (started if needed)."""
    from rasa_gpt3.local.embedded import BackendStartError, ensure_server
    from rasa_gpt3.errors import BackendError

    try:
        return ensure_server(state_dir).base_url
    except (BackendStartError, OSError) as error:
        raise BackendError(f"the local backend could not start: {error}") from None


def _connection(settings: Settings) -> Tuple[str, Optional[str]]:
    """(api_key, base_url) for `settings`."""
    if settings.uses_local_backend:
        return LOCAL_API_KEY, local_base_url(settings.local_state_dir)
    return str(settings.api_key), settings.base_url


def make_client(settings: Settings, *, timeout: Optional[float] = None, max_retries: Optional[int] = None) -> openai.OpenAI:
    """A synchronous SDK client for `settings` (the local backend when no API key is set)."""
    api_key, base_url = _connection(settings)
    return openai.OpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=settings.timeout if timeout is None else timeout,
        max_retries=settings.max_retries if max_retries is None else max_retries,
    )


def make_async_client(
    settings: Settings, *, timeout: Optional[float] = None, max_retries: Optional[int] = None
) -> openai.AsyncOpenAI:
    """An async SDK client for `settings`, one per event loop and configuration (do not close it yourself).

    Called inside a running loop, the client is cached for that loop (an async HTTP pool must not cross loops);
    called outside one, a fresh client is returned.
    """
    api_key, base_url = _connection(settings)
    timeout = settings.timeout if timeout is None else timeout
    max_retries = settings.max_retries if max_retries is None else max_retries
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None:
        return openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
    key = (api_key, base_url, float(timeout), int(max_retries))
    with _ASYNC_LOCK:
        clients = _ASYNC_CLIENTS.setdefault(loop, {})
        client = clients.get(key)
        if client is None or client.is_closed():
            client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries)
            clients[key] = client
        return client


_KEY_PATTERN = re.compile(r"\b(sk|sess|rk)-[A-Za-z0-9_\-*]{4,}")


def _redact(text: str) -> str:
    text = _KEY_PATTERN.sub(r"\1-***", text)
    text = " ".join(text.split())
    return text if len(text) <= 160 else text[:157] + "..."


def _host(exc: BaseException) -> str:
    request = getattr(exc, "request", None)
    try:
        return request.url.host if request is not None else "the model API"
    except Exception:
        return "the model API"


def describe_api_error(exc: BaseException) -> str:
    """One line saying what went wrong with a model API call, without the API key or the user's text."""
    if isinstance(exc, openai.APITimeoutError):
        return f"{_host(exc)} did not answer in time (timeout)"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach {_host(exc)} (connection failed or was dropped)"
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        message = _redact(str(error.get("message") or "")) if isinstance(error, dict) else ""
        code = error.get("code") if isinstance(error, dict) else None
        what = {
            400: "refused the request",
            401: "rejected the API key",
            403: "denied permission",
            404: "does not know the model or object",
            409: "reported a conflict",
            413: "found the request too large",
            422: "could not process the request",
            429: "is rate-limiting or out of quota",
        }.get(status, "failed" if status >= 500 else "answered with an error")
        line = f"{_host(exc)} {what} (HTTP {status}{', ' + str(code) if code else ''})"
        if message and status != 401:
            line += f": {message}"
        return line
    if isinstance(exc, openai.OpenAIError):
        return f"model API error: {_redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}"
    return f"{type(exc).__name__}: {_redact(str(exc).splitlines()[0] if str(exc) else '')}".rstrip(": ")
