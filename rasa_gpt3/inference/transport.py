"""One completion request through the SDK's HTTP client, and its answer reduced to what rasa_gpt3 reads.

No retries, breaker or cache here: `rasa_gpt3.inference.calls.BoundedCaller` puts those around `Transport.send`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import weakref
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional, Tuple

import httpx


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
            values = logprobs.get("token_logprobs") or ()
            token_logprobs = tuple(float(value) for value in values if value is not None)
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
    return Completion(
        text=str(text),
        first_token_alternatives=alternatives,
        token_logprobs=token_logprobs,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


class Transport:
    """Sends completion requests to one backend; the SDK clients are made on first use, without SDK retries.

    `client` / `async_client` may be given (tests, evaluate); otherwise they are made by `rasa_gpt3.client` from
    `settings` (which starts the embedded backend when it is the target).
    """

    def __init__(
        self,
        settings: Any,
        timeout: float,
        *,
        headers: Optional[Dict[str, str]] = None,
        client: Any = None,
        async_client: Any = None,
    ):
        self.settings = settings
        self.timeout = timeout
        self._headers = headers or None
        self._client = client
        self._given_async_client = async_client
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._client_lock = threading.Lock()

    def client(self) -> Any:
        """The synchronous SDK client."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    # imported here: the SDK takes seconds to import, and a Rasa model may never call it
                    from rasa_gpt3.client import make_client

                    self._client = make_client(self.settings, timeout=self.timeout, max_retries=0)
        return self._client

    def async_client(self) -> Any:
        """The asynchronous SDK client for the running event loop (an httpx pool belongs to one loop)."""
        if self._given_async_client is not None:
            return self._given_async_client
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            from rasa_gpt3.client import make_async_client

            client = make_async_client(self.settings, timeout=self.timeout, max_retries=0)
            self._async_clients[loop] = client
        return client

    def send(self, model: str, body: Mapping[str, Any], timeout: float) -> Completion:
        """One request (chat when `body` has `messages`, legacy when it has `prompt`); raises what the SDK raises."""
        path, payload, options = self._request(model, body, timeout)
        response = self.client().post(path, cast_to=httpx.Response, body=payload, options=options)
        return self._read(response, "messages" in body)

    async def send_async(self, model: str, body: Mapping[str, Any], timeout: float) -> Completion:
        """`send` for event loops."""
        path, payload, options = self._request(model, body, timeout)
        response = await self.async_client().post(path, cast_to=httpx.Response, body=payload, options=options)
        return self._read(response, "messages" in body)

    def _request(
        self, model: str, body: Mapping[str, Any], timeout: float
    ) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
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
