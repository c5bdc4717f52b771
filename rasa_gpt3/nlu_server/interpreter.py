"""A bounded `parse` for Rasa 3.6's RasaNLUHttpInterpreter, the client Rasa core uses for `endpoints.yml` `nlu: url:`.

Rasa's interpreter has three traps, each fixed here:
1. it sends the token only in the JSON body, while Rasa's own server reads `?token=`: the token goes in both;
2. it has no timeout of its own (aiohttp's default: 300 s), so a hung NLU server stalls the conversation for five
   minutes: every request gets `timeout` seconds (endpoints.yml `nlu: timeout:`, default 5);
3. on any error it returns an empty parse (intent "", text ""), which matches no rule and loses the user's text:
   instead the message gets `fallback_intent` (`nlu: fallback_intent:`, default nlu_fallback) at confidence 0 with
   its text, so the bot's nlu_fallback rule runs (action_gpt3_fallback then re-classifies the message itself).

Rasa 3.6 offers no supported way to set that timeout or to plug another interpreter: `load_agent` constructs
`RasaNLUHttpInterpreter(endpoints.nlu)` by name, and its plugin manager only discovers `rasa_plus`. So `install()`
replaces the class's `parse` method (the instance already exists when rasa_gpt3 is imported, so the class is patched,
not the name). The package applies it on import inside a process where Rasa core's interpreter module is loaded,
i.e. in `rasa run` loading a model with rasa_gpt3 components (see rasa_gpt3/__init__.py); elsewhere nothing changes.
Without `nlu: url:` Rasa never creates the interpreter and the patch is never called.

```yaml
# endpoints.yml of Rasa core
nlu:
  url: http://127.0.0.1:5006      # rasa-gpt3 nlu serve (or any Rasa-compatible /model/parse)
  token: s3cret                   # optional
  timeout: 3                      # seconds per message (default 5)
  fallback_intent: nlu_fallback   # default
```
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Optional

from rasa_gpt3.nlu_server.fallback import DEFAULT_FALLBACK_INTENT, fallback_parse

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0
PATCH_MARKER = "_rasa_gpt3_bounded"


def endpoint_options(endpoint_config: Any) -> Dict[str, Any]:
    """(timeout, fallback_intent) from the `nlu:` section's extra keys, with the defaults."""
    extra = getattr(endpoint_config, "kwargs", None) or {}
    timeout = extra.get("timeout", DEFAULT_TIMEOUT)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        timeout = DEFAULT_TIMEOUT
    if timeout <= 0:
        timeout = DEFAULT_TIMEOUT
    return {"timeout": timeout, "fallback_intent": str(extra.get("fallback_intent") or DEFAULT_FALLBACK_INTENT)}


def parse_url(url: str) -> str:
    """The /model/parse URL under the endpoint's `url`, as Rasa builds it."""
    return url + ("model/parse" if url.endswith("/") else "/model/parse")


def _valid_parse(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    return isinstance(data.get("intent"), dict) and isinstance(data.get("entities", []), list)


async def bounded_parse(self: Any, message: Any) -> Dict[str, Any]:
    """RasaNLUHttpInterpreter.parse with a timeout, the token in the query string and a fallback parse on errors."""
    import aiohttp

    config = self.endpoint_config
    options = endpoint_options(config)
    text = message.text or ""
    url = config.url if config is not None else None
    if not url:
        return _degraded(text, "no_url", "no NLU server URL in endpoints.yml", options)
    token: Optional[str] = config.token
    body = {"text": text, "message_id": message.sender_id}
    params = {}
    if token:
        body["token"] = token
        params[config.token_name or "token"] = token
    try:
        async with self.session.post(
            parse_url(url),
            json=body,
            params=params,
            headers=config.headers or None,
            timeout=aiohttp.ClientTimeout(total=options["timeout"]),
        ) as response:
            if response.status != 200:
                return _degraded(
                    text, f"http_{response.status}", f"the NLU server answered HTTP {response.status}", options
                )
            data = await response.json(content_type=None)
    except asyncio.TimeoutError:
        return _degraded(text, "timeout", f"the NLU server did not answer within {options['timeout']:g} s", options)
    except aiohttp.ClientError as error:
        return _degraded(text, "connection", f"cannot reach the NLU server ({type(error).__name__})", options)
    except ValueError:
        return _degraded(text, "bad_response", "the NLU server answered something that is not JSON", options)
    if not _valid_parse(data):
        return _degraded(text, "bad_response", "the NLU server's answer has no intent", options)
    data.setdefault("text", text)
    data.setdefault("entities", [])
    return data


setattr(bounded_parse, PATCH_MARKER, True)


def _degraded(text: str, outcome: str, why: str, options: Dict[str, Any]) -> Dict[str, Any]:
    logger.warning("rasa_gpt3: %s; the message gets %s", why, options["fallback_intent"])
    return fallback_parse(
        text, outcome, fallback_intent=options["fallback_intent"], source="client", budget=options["timeout"]
    )


def install() -> bool:
    """Replaces RasaNLUHttpInterpreter.parse with `bounded_parse`; False when it already was."""
    from rasa.core.http_interpreter import RasaNLUHttpInterpreter

    if getattr(RasaNLUHttpInterpreter.parse, PATCH_MARKER, False):
        return False
    RasaNLUHttpInterpreter.parse = bounded_parse
    logger.debug("rasa_gpt3: Rasa's NLU HTTP interpreter now has a timeout and falls back to the fallback intent")
    return True
