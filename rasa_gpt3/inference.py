"""The serving side of the fine-tuned models: bounded API calls and what their answers mean for Rasa.

Used by the NLU components (synchronously: Rasa 3.6 runs `process` inside Sanic's event loop), by the fallback
action (asynchronously) and by `evaluate`. Three layers:

- `BoundedCaller`: one request within a time budget (`CallPolicy.timeout` covers the whole call, retry included;
  synchronously every network wait is bounded by what is left of it, asynchronously it is a hard deadline),
  at most one quick retry for a refused connection, a 5xx or a 429 whose Retry-After fits the budget, a
  `CircuitBreaker` that skips the API for a cool-down after repeated failures, and an LRU `ResponseCache` keyed on
  (model, request body). A failed call raises `CallFailed` with a kind and a one-line reason; it never carries the
  user's text or the API key.
- Pure interpretation: `rank_intents` turns the first generated token's top logprobs into an intent ranking
  renormalised over the known labels (retrieval intents `faq/ask_x` summed into their base intent `faq`, as DIET
  ranks them); `locate_entities` finds the entity values the model wrote in the message text.
- `classify` / `classify_async` and `extract_entities` / `extract_entities_async`: request built by `prompts`,
  bounded call, interpretation; they never raise for an API problem and return a result saying what happened.
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, FrozenSet, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import httpx

from rasa_gpt3 import prompts

logger = logging.getLogger(__name__)

DEFAULT_FALLBACK_INTENT = "nlu_fallback"
RETRIEVAL_DELIMITER = "/"
# OpenAI's limits: chat top_logprobs <= 20, legacy completion logprobs <= 5
MAX_CHAT_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
# a retry only starts when at least this much of the budget is left
MIN_ATTEMPT_SECONDS = 0.05

# outcomes recorded on every prediction (the demo and the fallback action read them)
OUTCOME_OK = "ok"
OUTCOME_UNKNOWN_LABEL = "unknown_label"
OUTCOME_NO_LOGPROBS = "no_logprobs"
OUTCOME_INVALID_JSON = "invalid_json"


# ---------------------------------------------------------------- call policy, breaker, cache


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
    def from_config(cls, config: Mapping[str, Any]) -> "CallPolicy":
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


class CircuitBreaker:
    """Opens after `failure_threshold` consecutive failed calls; after `cooldown` seconds lets one trial call through.

    A successful trial closes it again, a failed one re-opens it for another cool-down. Thread-safe.
    """

    def __init__(self, failure_threshold: int = 3, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = max(1, int(failure_threshold))
        self.cooldown = float(cooldown)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: Optional[float] = None
        self._trial_started: Optional[float] = None

    @property
    def state(self) -> str:
        """'closed', 'open' (calls are skipped) or 'half_open' (the cool-down is over; one trial call may go)."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at < self.cooldown:
                return "open"
            return "half_open"

    def allow(self) -> bool:
        """Whether a call may go to the API now (in half-open state only one caller at a time gets True)."""
        with self._lock:
            if self._opened_at is None:
                return True
            now = self._clock()
            if now - self._opened_at < self.cooldown:
                return False
            # a trial whose caller never reported back must not block the breaker forever
            if self._trial_started is None or now - self._trial_started >= self.cooldown:
                self._trial_started = now
                return True
            return False

    def record_success(self) -> None:
        """Closes the circuit and forgets earlier failures."""
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_started = None

    def record_failure(self) -> bool:
        """Counts a failed call; returns True when this failure opened (or re-opened) the circuit."""
        with self._lock:
            self._failures += 1
            if self._trial_started is not None or (
                self._opened_at is None and self._failures >= self.failure_threshold
            ):
                self._opened_at = self._clock()
                self._trial_started = None
                return True
            return False


class ResponseCache:
    """A thread-safe LRU cache of completions keyed on (model, request body)."""

    def __init__(self, maxsize: int = 1024):
        self.maxsize = max(0, int(maxsize))
        self._entries: "OrderedDict[Hashable, Any]" = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Optional[Any]:
        """The cached value for `key` (marking it most recently used), or None."""
        if not self.maxsize:
            return None
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        """Stores `value`, evicting the least recently used entry when full."""
        if not self.maxsize:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forgets every entry."""
        with self._lock:
            self._entries.clear()


def cache_key(model: str, body: Mapping[str, Any]) -> Tuple[str, str]:
    """The cache key of a request: the model and the canonical JSON of the body."""
    return model, json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------- bounded calls


@dataclass(frozen=True)
class Completion:
    """What one completion returned, reduced to what rasa_gpt3 reads."""

    text: str
    # (token, logprob) alternatives of the first generated token, most likely first
    first_token_alternatives: Tuple[Tuple[str, float], ...] = ()
    # logprob of every generated token (empty when the API sent none)
    token_logprobs: Tuple[float, ...] = ()
    # time spent in the HTTP exchange (network + backend); 0 for a cache hit
    backend_seconds: float = 0.0
    cached: bool = False
    # the usage the API reported for this call (0 when it sent none)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class CallFailed(Exception):
    """A call that did not produce a completion; `kind` says why, the message is one line without user text."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


# failure kinds
TIMEOUT = "timeout"
RATE_LIMITED = "rate_limited"
SERVER_ERROR = "server_error"
CONNECTION = "connection"
CLIENT_ERROR = "client_error"
BAD_RESPONSE = "bad_response"
CIRCUIT_OPEN = "circuit_open"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer within the time budget"
    try:
        from rasa_gpt3.client import describe_api_error
    except ImportError:  # pragma: no cover - client.py is part of the package
        describe_api_error = None
    if describe_api_error is not None:
        try:
            return describe_api_error(exc)
        except Exception:  # a describer bug must not turn a degraded answer into a crash
            pass
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "")


def _retry_after_seconds(exc: BaseException) -> Optional[float]:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


def _classify_exception(exc: BaseException) -> Tuple[str, bool, Optional[float]]:
    """(failure kind, whether one retry may help, the server's Retry-After in seconds if any)."""
    import openai

    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError)):
        return TIMEOUT, False, None
    if isinstance(exc, openai.APIConnectionError):
        return CONNECTION, True, None
    if isinstance(exc, openai.RateLimitError):
        return RATE_LIMITED, True, _retry_after_seconds(exc)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500:
            return SERVER_ERROR, True, None
        return CLIENT_ERROR, False, None
    return BAD_RESPONSE, False, None


def parse_completion_body(body: Mapping[str, Any], chat: bool) -> Completion:
    """Reads text and logprobs from a chat or legacy completion response body; raises ValueError if malformed."""
    try:
        choice = body["choices"][0]
        logprobs = choice.get("logprobs") or {}
        if chat:
            text = (choice.get("message") or {}).get("content") or ""
            content = logprobs.get("content") or []
            token_logprobs = tuple(float(item["logprob"]) for item in content)
            alternatives: Tuple[Tuple[str, float], ...] = ()
            if content:
                first = content[0]
                alternatives = tuple((alt["token"], float(alt["logprob"])) for alt in first.get("top_logprobs") or ())
                if first["token"] not in {token for token, _ in alternatives}:
                    alternatives = ((first["token"], float(first["logprob"])),) + alternatives
        else:
            text = choice.get("text") or ""
            token_logprobs = tuple(float(value) for value in (logprobs.get("token_logprobs") or ()) if value is not None)
            tops = logprobs.get("top_logprobs") or []
            alternatives = ()
            if tops and tops[0]:
                alternatives = tuple((token, float(value)) for token, value in tops[0].items())
            tokens = logprobs.get("tokens") or []
            if tokens and token_logprobs and tokens[0] not in {token for token, _ in alternatives}:
                alternatives = ((tokens[0], token_logprobs[0]),) + alternatives
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        raise ValueError(f"unexpected completion response ({type(error).__name__})") from None
    alternatives = tuple(sorted(alternatives, key=lambda pair: -pair[1]))
    usage = body.get("usage") if isinstance(body.get("usage"), Mapping) else {}
    return Completion(text=str(text), first_token_alternatives=alternatives, token_logprobs=token_logprobs,
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0))


class BoundedCaller:
    """Sends completion requests to one backend within a `CallPolicy`; share one per process and backend.

    `client` / `async_client` may be given (tests, evaluate); otherwise they are made by `rasa_gpt3.client` from
    `settings` on first use, without SDK retries (this class does its own single retry inside the budget).
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
        self._client = client
        self._given_async_client = async_client
        self._async_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any]" = weakref.WeakKeyDictionary()
        self._client_lock = threading.Lock()
        self._headers = dict(policy.extra_headers) or None
        # calls that went to the API (a retry is part of its call; cache hits, skips and warm-ups not counted)
        self.calls_sent = 0

    # -- clients

    def client(self) -> Any:
        """The synchronous SDK client (made on first use; starts the embedded backend when it is the target)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    from rasa_gpt3.client import make_client

                    self._client = make_client(self.settings, timeout=self.policy.timeout, max_retries=0)
        return self._client

    def async_client(self) -> Any:
        """The asynchronous SDK client for the running event loop (an httpx pool belongs to one loop)."""
        if self._given_async_client is not None:
            return self._given_async_client
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            from rasa_gpt3.client import make_async_client

            client = make_async_client(self.settings, timeout=self.policy.timeout, max_retries=0)
            self._async_clients[loop] = client
        return client

    # -- calls

    def warm_up(self, model: str, body: Mapping[str, Any], timeout: float = 30.0) -> bool:
        """Sends one request outside budget, breaker and cache (loads the model on the local backend); never raises."""
        try:
            self._send(model, body, timeout)
            return True
        except Exception as exc:  # a failed warm-up only means the first real request may be slow
            logger.info("rasa_gpt3: warm-up request to %s failed: %s", model, _describe(exc))
            return False

    def complete(self, model: str, body: Mapping[str, Any]) -> Completion:
        """One bounded completion (chat when `body` has `messages`, legacy when it has `prompt`); raises CallFailed."""
        key = cache_key(model, body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if not self.breaker.allow():
            raise CallFailed(CIRCUIT_OPEN, f"skipped for up to {self.policy.breaker_cooldown:g} s after repeated failures")
        self.calls_sent += 1
        deadline = time.monotonic() + self.policy.timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            try:
                completion = self._send(model, body, max(remaining, MIN_ATTEMPT_SECONDS))
            except Exception as exc:  # every failure degrades; none may escape into Rasa
                kind, retryable, wait = self._next_step(exc, attempt, deadline)
                if wait is None:
                    self._fail(kind, exc)
                time.sleep(wait)
                continue
            return self._succeed(key, completion)

    async def complete_async(self, model: str, body: Mapping[str, Any]) -> Completion:
        """Like `complete`, for event loops (the fallback action); the budget is also enforced as a hard deadline."""
        key = cache_key(model, body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if not self.breaker.allow():
            raise CallFailed(CIRCUIT_OPEN, f"skipped for up to {self.policy.breaker_cooldown:g} s after repeated failures")
        self.calls_sent += 1
        deadline = time.monotonic() + self.policy.timeout
        attempt = 0
        while True:
            attempt += 1
            remaining = max(deadline - time.monotonic(), MIN_ATTEMPT_SECONDS)
            try:
                completion = await asyncio.wait_for(self._send_async(model, body, remaining), remaining)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                kind, retryable, wait = self._next_step(exc, attempt, deadline)
                if wait is None:
                    self._fail(kind, exc)
                await asyncio.sleep(wait)
                continue
            return self._succeed(key, completion)

    def _next_step(self, exc: BaseException, attempt: int, deadline: float) -> Tuple[str, bool, Optional[float]]:
        """(kind, retryable, seconds to wait before the retry or None to give up)."""
        kind, retryable, retry_after = _classify_exception(exc)
        if not (retryable and self.policy.retry and attempt == 1):
            return kind, retryable, None
        wait = max(self.policy.retry_delay, retry_after or 0.0)
        if deadline - time.monotonic() - wait < MIN_ATTEMPT_SECONDS:
            return kind, retryable, None
        return kind, retryable, wait

    def _fail(self, kind: str, exc: BaseException) -> None:
        opened = self.breaker.record_failure()
        reason = _describe(exc)
        if opened:
            reason += f"; skipping the API for {self.policy.breaker_cooldown:g} s"
        raise CallFailed(kind, reason) from None

    def _succeed(self, key: Tuple[str, str], completion: Completion) -> Completion:
        self.breaker.record_success()
        self.cache.put(key, replace(completion, cached=True, backend_seconds=0.0))
        return completion

    def _send(self, model: str, body: Mapping[str, Any], timeout: float) -> Completion:
        path, payload, options = self._request(model, body, timeout)
        response = self.client().post(path, cast_to=httpx.Response, body=payload, options=options)
        return self._read(response, "messages" in body)

    async def _send_async(self, model: str, body: Mapping[str, Any], timeout: float) -> Completion:
        path, payload, options = self._request(model, body, timeout)
        response = await self.async_client().post(path, cast_to=httpx.Response, body=payload, options=options)
        return self._read(response, "messages" in body)

    def _request(self, model: str, body: Mapping[str, Any], timeout: float) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
        # The SDK client's generic `post` (auth, base URL, timeout, error classes) without the typed-params
        # transform of `chat.completions.create`, which costs more than the rest of the call; the body is built
        # by `prompts` and IntentModel/EntityModel, so it is already exactly what the API takes.
        options: Dict[str, Any] = {"timeout": timeout}
        if self._headers:
            options["headers"] = self._headers
        path = "/chat/completions" if "messages" in body else "/completions"
        return path, {"model": model, **body}, options

    @staticmethod
    def _read(response: Any, chat: bool) -> Completion:
        try:
            body = json.loads(response.content)
        except ValueError:
            raise ValueError("completion response is not JSON") from None
        completion = parse_completion_body(body, chat)
        try:
            elapsed = response.elapsed.total_seconds()
        except Exception:  # elapsed is only known once the response is closed
            elapsed = 0.0
        return replace(completion, backend_seconds=elapsed)


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
    import hashlib

    return hashlib.sha256(secret.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- intents


def base_intent(intent: str) -> str:
    """The base intent of a retrieval intent (`faq/ask_x` → `faq`); other intents unchanged."""
    return intent.split(RETRIEVAL_DELIMITER, 1)[0]


@dataclass(frozen=True)
class IntentModel:
    """A fine-tuned intent model: its id, record format and the label codec (intent → label)."""

    model: str
    fmt: str
    labels: Mapping[str, str]
    fallback_intent: str = DEFAULT_FALLBACK_INTENT
    ranking_length: int = 10
    top_logprobs: int = MAX_CHAT_TOP_LOGPROBS
    _exact: Dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        # the codec makes every label one token, so a label is found by exact match of the first token
        object.__setattr__(self, "_exact", {str(label).strip(): intent for intent, label in self.labels.items()})

    @property
    def intents(self) -> List[str]:
        """Every intent the model knows (full retrieval intents included), sorted."""
        return sorted(self.labels)

    def intents_for_token(self, token: str) -> Tuple[str, ...]:
        """The intent whose label a generated token is (surrounding whitespace ignored); empty when none."""
        intent = self._exact.get(token.strip())
        return (intent,) if intent is not None else ()

    def request_body(self, text: str) -> Dict[str, Any]:
        """The request body for `text`: the prompt from `prompts`, temperature 0, one token, its top logprobs."""
        body = dict(prompts.intent_request(text, self.fmt))
        body["temperature"] = 0
        body["max_tokens"] = 1
        if self.fmt == "chat":
            body["logprobs"] = True
            body["top_logprobs"] = max(1, min(self.top_logprobs, MAX_CHAT_TOP_LOGPROBS))
        else:
            body["logprobs"] = max(1, min(self.top_logprobs, MAX_COMPLETION_LOGPROBS))
        return body


@dataclass(frozen=True)
class IntentPrediction:
    """An intent decision in Rasa's terms, plus how it came about."""

    intent: str
    confidence: float
    # [{"name": base intent, "confidence": p}], best first, at most IntentModel.ranking_length
    ranking: List[Dict[str, Any]]
    # the full intent the model chose (`faq/ask_x` for a retrieval intent), None when it fell back
    full_intent: Optional[str] = None
    # the ranking over full intents (differs from `ranking` only with retrieval intents)
    full_ranking: List[Dict[str, Any]] = field(default_factory=list)
    # "ok", "unknown_label", "no_logprobs", or a CallFailed kind ("timeout", "circuit_open", ...)
    outcome: str = OUTCOME_OK
    model: Optional[str] = None
    cached: bool = False
    backend_seconds: float = 0.0
    error: Optional[str] = None
    # tokens this call was billed for, as the API reported them (0 for a cache hit or a failed call)
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def decided(self) -> bool:
        """True when the model's answer (fresh or cached) gave the intent, False when it fell back."""
        return self.full_intent is not None

    def metadata(self) -> Dict[str, Any]:
        """The JSON-safe record of what the model did, stored on the message under `gpt3`."""
        data: Dict[str, Any] = {
            "asked": True,
            "decided": self.decided,
            "outcome": self.outcome,
            "model": self.model,
            "cached": self.cached,
        }
        if self.backend_seconds:
            # the HTTP exchange (network + model); the component's own time is the rest
            data["backend_ms"] = round(self.backend_seconds * 1000, 3)
        if self.full_intent is not None:
            data["full_intent"] = self.full_intent
        if self.full_ranking and any(RETRIEVAL_DELIMITER in item["name"] for item in self.full_ranking):
            data["full_ranking"] = self.full_ranking
        if self.error:
            data["error"] = self.error
        return data


def fallback_prediction(intent_model: IntentModel, outcome: str, error: Optional[str] = None) -> IntentPrediction:
    """The prediction when the model could not decide: the fallback intent at confidence 0, no ranking."""
    return IntentPrediction(
        intent=intent_model.fallback_intent,
        confidence=0.0,
        ranking=[],
        outcome=outcome,
        model=intent_model.model,
        error=error,
    )


def rank_intents(completion: Completion, intent_model: IntentModel) -> IntentPrediction:
    """Reads an intent prediction from a one-token completion.

    The probabilities of the first token's alternatives that are known labels are renormalised to sum to 1.
    Retrieval intents are summed
    into their base intent, which is what INTENT and the ranking carry; the full intent is the most likely one
    within the winning base intent. A generated token that is no known label gives the fallback intent.
    """
    generated = intent_model.intents_for_token(prompts.clean_completion(completion.text) or completion.text)
    if not generated:
        return replace(
            fallback_prediction(intent_model, OUTCOME_UNKNOWN_LABEL),
            cached=completion.cached,
            backend_seconds=completion.backend_seconds,
            **_billed_tokens(completion),
        )
    scores: Dict[str, float] = {}
    for token, logprob in completion.first_token_alternatives:
        for intent in intent_model.intents_for_token(token):
            scores[intent] = scores.get(intent, 0.0) + math.exp(logprob)
    outcome = OUTCOME_OK
    if not scores:
        # no logprobs sent back: the answer is all there is to go on
        outcome = OUTCOME_NO_LOGPROBS
        scores = {intent: 1.0 / len(generated) for intent in generated}
    total = sum(scores.values())
    full = {intent: score / total for intent, score in scores.items()}
    bases: Dict[str, float] = {}
    for intent, probability in full.items():
        bases[base_intent(intent)] = bases.get(base_intent(intent), 0.0) + probability
    ranked_bases = sorted(bases.items(), key=lambda pair: (-pair[1], pair[0]))
    ranked_full = sorted(full.items(), key=lambda pair: (-pair[1], pair[0]))
    top_base, top_confidence = ranked_bases[0]
    full_intent = next(intent for intent, _ in ranked_full if base_intent(intent) == top_base)
    length = max(1, intent_model.ranking_length)
    return IntentPrediction(
        intent=top_base,
        confidence=top_confidence,
        ranking=[{"name": name, "confidence": value} for name, value in ranked_bases[:length]],
        full_intent=full_intent,
        full_ranking=[{"name": name, "confidence": value} for name, value in ranked_full[:length]],
        outcome=outcome,
        model=intent_model.model,
        cached=completion.cached,
        backend_seconds=completion.backend_seconds,
        **_billed_tokens(completion),
    )


def _billed_tokens(completion: Completion) -> Dict[str, int]:
    if completion.cached:
        return {}
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens}


def classify(text: str, intent_model: IntentModel, caller: BoundedCaller) -> IntentPrediction:
    """Classifies `text` with the fine-tuned model within the caller's budget; never raises for API failures."""
    try:
        completion = caller.complete(intent_model.model, intent_model.request_body(text))
    except CallFailed as failure:
        _log_failure("intent", intent_model.model, failure)
        return fallback_prediction(intent_model, failure.kind, failure.reason)
    return rank_intents(completion, intent_model)


async def classify_async(text: str, intent_model: IntentModel, caller: BoundedCaller) -> IntentPrediction:
    """`classify` for event loops (the fallback action's re-classification)."""
    try:
        completion = await caller.complete_async(intent_model.model, intent_model.request_body(text))
    except CallFailed as failure:
        _log_failure("intent", intent_model.model, failure)
        return fallback_prediction(intent_model, failure.kind, failure.reason)
    return rank_intents(completion, intent_model)


def _log_failure(task: str, model: str, failure: CallFailed) -> None:
    # one line, never the message text or the key; an open circuit was already logged when it opened
    if failure.kind == CIRCUIT_OPEN:
        logger.debug("rasa_gpt3 %s model %s not asked: %s", task, model, failure.reason)
    else:
        logger.warning("rasa_gpt3 %s model %s failed (%s): %s", task, model, failure.kind, failure.reason)


# ---------------------------------------------------------------- entities


@dataclass(frozen=True)
class EntityModel:
    """A fine-tuned entities model and the entity types, roles and groups the bot's data knows."""

    model: str
    fmt: str
    entity_types: FrozenSet[str]
    roles: FrozenSet[str] = frozenset()
    groups: FrozenSet[str] = frozenset()
    max_tokens: int = 200

    def request_body(self, text: str) -> Dict[str, Any]:
        """The request body for `text`: the prompt from `prompts`, temperature 0, the answer's token logprobs."""
        body = dict(prompts.entities_request(text, self.fmt))
        body["temperature"] = 0
        body["max_tokens"] = self.max_tokens
        if self.fmt == "chat":
            body["logprobs"] = True
        else:
            body["logprobs"] = 1
            body["stop"] = prompts.stop_sequences(self.fmt)
        return body


@dataclass(frozen=True)
class EntityExtraction:
    """Entities found in one message, and how it went."""

    entities: List[Dict[str, Any]]
    outcome: str = OUTCOME_OK
    # how many entities the model named that were dropped (unknown type, or not found in the text)
    dropped: int = 0
    model: Optional[str] = None
    cached: bool = False
    error: Optional[str] = None


def answer_confidence(completion: Completion) -> float:
    """The probability of the whole generated answer (product of its token probabilities); 1.0 without logprobs."""
    if not completion.token_logprobs:
        return 1.0
    return math.exp(sum(completion.token_logprobs))


def _is_word_edge(text: str, start: int, end: int) -> bool:
    left = start == 0 or not text[start - 1].isalnum() or not text[start].isalnum()
    right = end == len(text) or not text[end].isalnum() or not text[end - 1].isalnum()
    return left and right


def _find_span(text: str, value: str, taken: Sequence[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    words = value.split()
    if not words:
        return None
    # the model saw whitespace-normalised text, so any run of whitespace in the message matches one space
    pattern = r"\s+".join(re.escape(word) for word in words)
    for flags in (0, re.IGNORECASE):
        spans = [(m.start(), m.end()) for m in re.finditer(pattern, text, flags)]
        free = [s for s in spans if not any(s[0] < end and start < s[1] for start, end in taken)]
        # whole words first: "art" should not be found inside "start" when it also stands alone
        for span in sorted(free, key=lambda s: (not _is_word_edge(text, *s), s[0])):
            return span
    return None


def locate_entities(
    text: str,
    answers: Iterable[Mapping[str, Optional[str]]],
    entity_types: Optional[Iterable[str]] = None,
    roles: Optional[Iterable[str]] = None,
    groups: Optional[Iterable[str]] = None,
    confidence: float = 1.0,
) -> Tuple[List[Dict[str, Any]], int]:
    """Places the model's entity answers in `text`; returns (Rasa entity dicts sorted by start, number dropped).

    Each value is searched exactly, then case-insensitively, whole words first, skipping text already taken by an
    earlier answer (so a value named twice takes two occurrences). `value` is the text span itself, so
    EntitySynonymMapper maps it as it does DIET's. Unknown entity types and values not in the text are dropped;
    a role or group the data does not know is left off.
    """
    known_types = None if entity_types is None else set(entity_types)
    known_roles = None if roles is None else set(roles)
    known_groups = None if groups is None else set(groups)
    taken: List[Tuple[int, int]] = []
    located: List[Dict[str, Any]] = []
    dropped = 0
    for answer in answers:
        entity_type = answer.get("entity")
        value = answer.get("value")
        if not entity_type or value is None or (known_types is not None and entity_type not in known_types):
            dropped += 1
            continue
        span = _find_span(text, str(value), taken)
        if span is None:
            dropped += 1
            continue
        taken.append(span)
        start, end = span
        entity: Dict[str, Any] = {"entity": entity_type, "start": start, "end": end, "value": text[start:end]}
        role, group = answer.get("role"), answer.get("group")
        if role is not None and (known_roles is None or role in known_roles):
            entity["role"] = role
        if group is not None and (known_groups is None or group in known_groups):
            entity["group"] = group
        entity["confidence_entity"] = confidence
        located.append(entity)
    located.sort(key=lambda entity: (entity["start"], entity["end"]))
    return located, dropped


def read_entities(text: str, completion: Completion, entity_model: EntityModel) -> EntityExtraction:
    """Turns an entities completion into located entities; invalid JSON gives none and outcome `invalid_json`."""
    try:
        answers = prompts.parse_entities(completion.text)
    except ValueError as error:
        return EntityExtraction([], OUTCOME_INVALID_JSON, model=entity_model.model, cached=completion.cached, error=str(error))
    entities, dropped = locate_entities(
        text,
        answers,
        entity_model.entity_types,
        entity_model.roles,
        entity_model.groups,
        confidence=answer_confidence(completion),
    )
    return EntityExtraction(entities, OUTCOME_OK, dropped, entity_model.model, completion.cached)


def extract_entities(text: str, entity_model: EntityModel, caller: BoundedCaller) -> EntityExtraction:
    """Extracts entities from `text` with the fine-tuned model within the caller's budget; never raises."""
    try:
        completion = caller.complete(entity_model.model, entity_model.request_body(text))
    except CallFailed as failure:
        _log_failure("entities", entity_model.model, failure)
        return EntityExtraction([], failure.kind, model=entity_model.model, error=failure.reason)
    return _warn_if_invalid(read_entities(text, completion, entity_model))


async def extract_entities_async(text: str, entity_model: EntityModel, caller: BoundedCaller) -> EntityExtraction:
    """`extract_entities` for event loops."""
    try:
        completion = await caller.complete_async(entity_model.model, entity_model.request_body(text))
    except CallFailed as failure:
        _log_failure("entities", entity_model.model, failure)
        return EntityExtraction([], failure.kind, model=entity_model.model, error=failure.reason)
    return _warn_if_invalid(read_entities(text, completion, entity_model))


def _warn_if_invalid(extraction: EntityExtraction) -> EntityExtraction:
    if extraction.outcome == OUTCOME_INVALID_JSON:
        logger.warning("rasa_gpt3 entities model %s gave an answer that is not an entity list: %s",
                       extraction.model, extraction.error)
    return extraction
