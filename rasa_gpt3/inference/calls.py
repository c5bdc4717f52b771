"""Bounded serving calls: one completion within a time budget, through cache, circuit breaker and one quick retry.

`CallPolicy.timeout` covers the whole call, the retry included: synchronously every network wait is bounded by what
is left of it, asynchronously it is also a hard deadline. At most one quick retry follows a refused or dropped
connection, a 5xx, or a 429 whose Retry-After fits the budget. A failed call raises `CallFailed` with an `Outcome`
kind and a one-line reason; it never carries the user's text or the API key. A message longer than the length
limit is never sent (`check_message_length`): it fails as `too_long` before any call, so it costs the backend
nothing and the circuit breaker never counts it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Hashable, Mapping, Optional, Tuple

from rasa_gpt3.errors import CallFailed
from rasa_gpt3.inference.breaker import CircuitBreaker
from rasa_gpt3.inference.cache import ResponseCache, cache_key
from rasa_gpt3.inference.transport import Completion, Transport
from rasa_gpt3.outcomes import Outcome

logger = logging.getLogger(__name__)

# a retry only starts when at least this much of the budget is left
MIN_ATTEMPT_SECONDS = 0.05

# The longest user message sent to a model, in characters (`max_message_chars`). Real chat messages are far
# shorter: the longest of banking77's 13,083 messages has 433 characters, financial-demo's longest NLU example 76.
# Chat channels cap a message at 4,096 (Telegram, WhatsApp) or 2,000 (Facebook Messenger), so every message a
# channel delivers fits, while a pasted document or an attack (1 MB) is refused before it costs the backend
# anything (on the local backend a 100 KB message took seconds and gigabytes, and blocked the other requests).
DEFAULT_MAX_MESSAGE_CHARS = 4096


@dataclass(frozen=True)
class CallPolicy:
    """How long one call may take and how failures are handled."""

    # seconds for the whole call, the retry included
    timeout: float = 2.0
    # at most one quick retry (refused connection, dropped connection, 5xx, 429 whose Retry-After fits the budget)
    retry: bool = True
    retry_delay: float = 0.05
    # consecutive failed calls that open the circuit, and how long it stays open
    breaker_failures: int = 3
    breaker_cooldown: float = 30.0
    # entries of the (model, request) LRU cache; 0 disables it
    cache_size: int = 1024
    # sent with every request (e.g. a gateway's routing header); a tuple of pairs to stay hashable
    extra_headers: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CallPolicy:
        """A policy from a component's or action's configuration keys of the same names."""
        defaults = cls()
        headers = config.get("extra_headers") or {}
        return cls(
            timeout=float(config.get("timeout") or defaults.timeout),
            retry=bool(config.get("retry", defaults.retry)),
            retry_delay=float(config.get("retry_delay", defaults.retry_delay)),
            breaker_failures=int(config.get("breaker_failures") or defaults.breaker_failures),
            breaker_cooldown=float(config.get("breaker_cooldown", defaults.breaker_cooldown)),
            cache_size=int(config.get("cache_size", defaults.cache_size)),
            extra_headers=tuple(sorted((str(k), str(v)) for k, v in dict(headers).items())),
        )


class BoundedCaller:
    """Sends completion requests to one backend within a `CallPolicy`; share one per process and backend.

    `client` / `async_client` may be given (tests, evaluate); otherwise `Transport` makes them from `settings`.
    """

    def __init__(
        self,
        settings: Any = None,
        policy: CallPolicy = CallPolicy(),
        *,
        client: Any = None,
        async_client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.policy = policy
        self.breaker = CircuitBreaker(policy.breaker_failures, policy.breaker_cooldown, clock=clock)
        self.cache = ResponseCache(policy.cache_size)
        self.transport = Transport(
            settings, policy.timeout, headers=dict(policy.extra_headers), client=client, async_client=async_client
        )
        # calls that went to the API (a retry is part of its call; cache hits, skips and warm-ups not counted)
        self.calls_sent = 0

    def warm_up(self, model: str, body: Mapping[str, Any], timeout: float = 30.0) -> bool:
        """Sends one request outside budget, breaker and cache (loads the model on the local backend); never raises."""
        try:
            self.transport.send(model, body, timeout)
            return True
        except Exception as exc:  # a failed warm-up only means the first real request may be slow
            logger.info("rasa_gpt3: warm-up request to %s failed: %s", model, _classify(exc).message)
            return False

    def complete(self, model: str, body: Mapping[str, Any]) -> Completion:
        """One bounded completion (chat when `body` has `messages`, legacy when it has `prompt`); raises CallFailed."""
        call = self._begin(model, body)
        if call.cached is not None:
            return call.cached
        while True:
            try:
                completion = self.transport.send(model, body, call.next_attempt())
            except Exception as exc:  # every failure degrades; none may escape into Rasa
                time.sleep(self._retry_wait(exc, call))
                continue
            return self._succeed(call, completion)

    async def complete_async(self, model: str, body: Mapping[str, Any]) -> Completion:
        """Like `complete`, for event loops (the fallback action); the budget is also enforced as a hard deadline."""
        call = self._begin(model, body)
        if call.cached is not None:
            return call.cached
        while True:
            left = call.next_attempt()
            try:
                completion = await asyncio.wait_for(self.transport.send_async(model, body, left), left)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await asyncio.sleep(self._retry_wait(exc, call))
                continue
            return self._succeed(call, completion)

    def _begin(self, model: str, body: Mapping[str, Any]) -> _Call:
        """The call, answered from the cache when it can be; raises CallFailed(circuit_open) while the API is off."""
        key = cache_key(model, body)
        cached = self.cache.get(key)
        if cached is not None:
            return _Call(key, deadline=0.0, cached=cached)
        if not self.breaker.allow():
            raise CallFailed(
                Outcome.CIRCUIT_OPEN, f"skipped for up to {self.policy.breaker_cooldown:g} s after repeated failures"
            )
        self.calls_sent += 1
        return _Call(key, deadline=time.monotonic() + self.policy.timeout)

    def _retry_wait(self, exc: BaseException, call: _Call) -> float:
        """Seconds to wait before the one retry; raises CallFailed when the failure is not worth retrying."""
        failure = _classify(exc)
        # a timeout has used the budget up; a retry must also fit what is left of it after the wait
        if self.policy.retry and call.attempts == 1 and failure.retryable and failure.kind is not Outcome.TIMEOUT:
            wait = max(self.policy.retry_delay, failure.retry_after or 0.0)
            if call.deadline - time.monotonic() - wait >= MIN_ATTEMPT_SECONDS:
                return wait
        opened = self.breaker.record_failure()
        reason = failure.message
        if opened:
            reason += f"; skipping the API for {self.policy.breaker_cooldown:g} s"
        raise CallFailed(failure.kind, reason) from None

    def _succeed(self, call: _Call, completion: Completion) -> Completion:
        self.breaker.record_success()
        self.cache.put(call.key, replace(completion, cached=True, backend_seconds=0.0))
        return completion


@dataclass
class _Call:
    """One bounded call under way: its cache key and deadline, how many attempts it made, or its cached answer."""

    key: Tuple[str, str]
    deadline: float
    attempts: int = 0
    cached: Optional[Completion] = None

    def next_attempt(self) -> float:
        """Counts an attempt and returns the seconds it may take (what is left of the budget, at least a minimum)."""
        self.attempts += 1
        return max(self.deadline - time.monotonic(), MIN_ATTEMPT_SECONDS)


def check_message_length(text: str, limit: Optional[int]) -> None:
    """Raises CallFailed(too_long) when `text` is longer than `limit` characters (None: no limit); never sends it."""
    if limit is not None and len(text) > limit:
        raise CallFailed(
            Outcome.TOO_LONG, f"message of {len(text):,} characters is over max_message_chars ({limit:,}); not sent"
        )


def message_request(served_model: Any, text: str) -> Dict[str, Any]:
    """The request an IntentModel or EntityModel makes for a user's `text`; CallFailed(too_long) over its limit."""
    check_message_length(text, served_model.max_message_chars)
    return served_model.request_body(text)


def _classify(exc: BaseException) -> Any:
    # imported here: the SDK takes seconds to import, and a call that never fails never needs it
    from rasa_gpt3.client import classify_api_error

    return classify_api_error(exc)


def log_failure(task: str, model: str, failure: CallFailed) -> None:
    """One log line for a failed call of `task`'s model, never with the message text or the key."""
    # an open circuit was already logged when it opened
    if failure.kind is Outcome.CIRCUIT_OPEN:
        logger.debug("rasa_gpt3 %s model %s not asked: %s", task, model, failure.reason)
    elif failure.kind is Outcome.TOO_LONG:
        logger.info("rasa_gpt3 %s model %s not asked: %s", task, model, failure.reason)
    else:
        logger.warning("rasa_gpt3 %s model %s failed (%s): %s", task, model, failure.kind, failure.reason)


_CALLERS: Dict[Hashable, BoundedCaller] = {}
_CALLERS_LOCK = threading.Lock()


def caller_for(settings: Any, policy: CallPolicy = CallPolicy()) -> BoundedCaller:
    """The process-wide caller for this backend and policy, so components and actions share breaker and cache."""
    key = (
        settings.backend_name,
        settings.base_url,
        str(settings.local_state_dir) if settings.uses_local_backend else None,
        # a different key must not reuse a client made with another key; only a digest is kept
        _digest(settings.api_key),
        policy,
    )
    with _CALLERS_LOCK:
        caller = _CALLERS.get(key)
        if caller is None:
            caller = _CALLERS[key] = BoundedCaller(settings, policy)
        return caller


def _digest(secret: Optional[str]) -> Optional[str]:
    if not secret:
        return None
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]
