"""The only module that imports the openai SDK: client factories, and what the SDK's errors mean.

With an API key (and no RASA_GPT3_LOCAL=1) the clients go to OpenAI, or to `OPENAI_BASE_URL` (Azure OpenAI, any
compatible server). Without one they go to the embedded local backend, started on 127.0.0.1 on a free port the
first time a client for that state directory is made in this process.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import re
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple, Type

import openai

from rasa_gpt3.errors import BackendError, first_line
from rasa_gpt3.outcomes import Outcome
from rasa_gpt3.settings import Settings

LOCAL_API_KEY = "local"
# every exception the SDK raises; other modules catch these without importing openai
SDK_ERRORS: Tuple[Type[BaseException], ...] = (openai.OpenAIError,)

_ASYNC_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dict[Tuple, openai.AsyncOpenAI]] = (
    weakref.WeakKeyDictionary()
)
_ASYNC_LOCK = threading.Lock()


def local_base_url(state_dir: os.PathLike) -> str:
    """The base URL of this process's embedded local backend for `state_dir` (started if needed)."""
    from rasa_gpt3.local.embedded import BackendStartError, ensure_server

    try:
        return ensure_server(state_dir).base_url
    except (BackendStartError, OSError) as error:
        raise BackendError(f"the local backend could not start: {error}") from None


def _connection(settings: Settings) -> Tuple[str, Optional[str]]:
    """(api_key, base_url) for `settings`."""
    if settings.uses_local_backend:
        return LOCAL_API_KEY, local_base_url(settings.local_state_dir)
    return str(settings.api_key), settings.base_url


def make_client(
    settings: Settings, *, timeout: Optional[float] = None, max_retries: Optional[int] = None
) -> openai.OpenAI:
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


@dataclass(frozen=True)
class ApiFailure:
    """What an exception from a model API call means: its kind, whether retrying may help and when, one line."""

    kind: Outcome
    # a timeout, a refused or dropped connection, a 429 or a 5xx: the same request may succeed later
    retryable: bool
    # one line without the API key or the user's text
    message: str
    # for a 429: the seconds the server asked to wait (None when it did not say)
    retry_after: Optional[float] = None
    # the HTTP status when the API answered
    status: Optional[int] = None

    @property
    def not_found(self) -> bool:
        """The API does not know the model, job or file (HTTP 404)."""
        return self.status == 404

    @property
    def forbidden(self) -> bool:
        """The key may not use the model or object (HTTP 403)."""
        return self.status == 403


def classify_api_error(exc: BaseException) -> ApiFailure:
    """What `exc`, raised by an SDK call (or by a time budget running out), means for the caller."""
    message = _message(exc)
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return ApiFailure(Outcome.TIMEOUT, True, message)
    if isinstance(exc, openai.APIConnectionError):
        return ApiFailure(Outcome.CONNECTION, True, message)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if isinstance(exc, openai.RateLimitError):
            return ApiFailure(Outcome.RATE_LIMITED, True, message, _retry_after(exc.response), status)
        if status >= 500:
            return ApiFailure(Outcome.SERVER_ERROR, True, message, status=status)
        return ApiFailure(Outcome.CLIENT_ERROR, False, message, status=status)
    return ApiFailure(Outcome.BAD_RESPONSE, False, message)


def describe_api_error(exc: BaseException) -> str:
    """One line saying what went wrong with a model API call, without the API key or the user's text."""
    return classify_api_error(exc).message


@contextmanager
def api_errors(doing: str) -> Iterator[None]:
    """Turns SDK errors raised inside into a one-line BackendError saying what was being done."""
    try:
        yield
    except SDK_ERRORS as error:
        raise BackendError(f"{doing}: {describe_api_error(error)}") from None


def _retry_after(response: Any) -> Optional[float]:
    """Seconds from `retry-after-ms`, else `retry-after` as seconds or as an HTTP date (as openai-python reads them)."""
    headers: Optional[Mapping[str, str]] = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        return float(headers.get("retry-after-ms")) / 1000  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    try:
        date = email.utils.parsedate_tz(value)  # type: ignore[arg-type]
        if date is None:
            return None
        return float(email.utils.mktime_tz(date) - time.time())
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _message(exc: BaseException) -> str:
    try:
        return _describe(exc)
    except Exception:  # a describer bug must not turn a degraded answer into a crash
        status = getattr(exc, "status_code", None)
        return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer within the time budget"
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
        return f"model API error: {_redact(first_line(exc))}"
    return f"{type(exc).__name__}: {_redact(first_line(exc))}".rstrip(": ")
