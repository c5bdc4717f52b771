"""Rasa core's NLU HTTP interpreter with rasa_gpt3's bounded parse, against real HTTP servers on 127.0.0.1.

Each test runs Rasa 3.6's own RasaNLUHttpInterpreter (patched by `install()`) against a small aiohttp server that
answers, hangs, fails or talks nonsense, as an NLU server might.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from aiohttp import web
from rasa.core.channels.channel import UserMessage
from rasa.core.http_interpreter import RasaNLUHttpInterpreter
from rasa.utils.endpoints import EndpointConfig

from rasa_gpt3.demo import free_port
from rasa_gpt3.nlu_server.fallback import RECORD_KEY
from rasa_gpt3.nlu_server.interpreter import DEFAULT_TIMEOUT, bounded_parse, endpoint_options, install

HANG_SECONDS = 30


async def _nlu_server(handler):
    """An aiohttp server on a free 127.0.0.1 port whose POST /model/parse is `handler`; returns (runner, url)."""
    app = web.Application()
    app.router.add_post("/model/parse", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def _parse_with(handler, text: str = "where is my money", **endpoint):
    """Runs the patched interpreter once against a server with `handler`; (result, seconds, requests seen)."""
    install()
    seen = []

    async def recorded(request: web.Request) -> web.Response:
        seen.append({"query": dict(request.query), "body": await request.json()})
        return await handler(request)

    async def main():
        runner, url = await _nlu_server(recorded)
        interpreter = RasaNLUHttpInterpreter(EndpointConfig(url, **endpoint))
        try:
            started = time.monotonic()
            result = await interpreter.parse(UserMessage(text, sender_id="conversation-1"))
            return result, time.monotonic() - started
        finally:
            await interpreter.session.close()
            await runner.cleanup()

    result, seconds = asyncio.run(main())
    return result, seconds, seen


async def _answer(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response(
        {
            "text": body["text"],
            "intent": {"name": "check_balance", "confidence": 0.9},
            "entities": [],
            "intent_ranking": [{"name": "check_balance", "confidence": 0.9}],
        }
    )


async def _hang(request: web.Request) -> web.Response:
    await asyncio.sleep(HANG_SECONDS)
    return await _answer(request)


def test_install_patches_rasa_s_interpreter_once():
    install()
    assert RasaNLUHttpInterpreter.parse is bounded_parse
    assert install() is False


def test_a_good_answer_passes_through_and_the_token_goes_where_rasa_s_server_reads_it():
    result, _, seen = _parse_with(_answer, token="s3cret")

    assert result["intent"] == {"name": "check_balance", "confidence": 0.9}
    assert result["text"] == "where is my money" and RECORD_KEY not in result
    # Rasa's server reads ?token=; Rasa's interpreter sent it only in the body: both now
    assert seen[0]["query"] == {"token": "s3cret"}
    assert seen[0]["body"] == {"text": "where is my money", "message_id": "conversation-1", "token": "s3cret"}


def test_a_hung_nlu_server_gives_the_fallback_intent_with_the_text_after_the_timeout():
    result, seconds, _ = _parse_with(_hang, timeout=0.5)

    assert result["intent"] == {"name": "nlu_fallback", "confidence": 0.0}
    assert result["text"] == "where is my money" and result["entities"] == []
    assert result[RECORD_KEY] == {"outcome": "timeout", "source": "client", "budget": 0.5}
    # Rasa's own interpreter would have waited for the server (aiohttp's default: 300 s)
    assert seconds < HANG_SECONDS


def test_a_dead_nlu_server_gives_the_fallback_intent_at_once():
    install()

    async def main():
        interpreter = RasaNLUHttpInterpreter(EndpointConfig(f"http://127.0.0.1:{free_port()}", timeout=5))
        try:
            return await interpreter.parse(UserMessage("block my card", sender_id="c2"))
        finally:
            await interpreter.session.close()

    result = asyncio.run(main())
    assert (result["intent"]["name"], result["text"], result[RECORD_KEY]["outcome"]) == (
        "nlu_fallback",
        "block my card",
        "connection",
    )


@pytest.mark.parametrize(
    "status, body, outcome",
    [
        (500, json.dumps({"error": "boom"}), "http_500"),
        (401, json.dumps({"status": "failure", "reason": "NotAuthenticated"}), "http_401"),
        (200, "<html>not json</html>", "bad_response"),
        (200, json.dumps({"text": "x", "entities": []}), "bad_response"),
    ],
)
def test_errors_and_nonsense_give_the_fallback_intent(status, body, outcome):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type="application/json")

    result, _, _ = _parse_with(handler, fallback_intent="out_of_scope")

    assert result["intent"] == {"name": "out_of_scope", "confidence": 0.0}
    assert result["text"] == "where is my money"
    assert result[RECORD_KEY]["outcome"] == outcome


def test_endpoint_options_defaults_and_bad_values():
    defaults = {"timeout": DEFAULT_TIMEOUT, "fallback_intent": "nlu_fallback"}
    assert endpoint_options(EndpointConfig("http://x")) == defaults
    assert endpoint_options(EndpointConfig("http://x", timeout="2.5"))["timeout"] == 2.5
    for bad in ("soon", -1, 0):
        assert endpoint_options(EndpointConfig("http://x", timeout=bad))["timeout"] == DEFAULT_TIMEOUT


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout


def test_importing_rasa_gpt3_inside_rasa_core_installs_the_bounded_parse_and_nowhere_else():
    # as in `rasa run`: Rasa core is loaded, then the model's components import rasa_gpt3
    assert (
        _python(
            "import rasa.core.agent, rasa_gpt3.nlu.intent_classifier\n"
            "from rasa.core.http_interpreter import RasaNLUHttpInterpreter as I\n"
            "print(I.parse.__name__)"
        ).strip()
        == "bounded_parse"
    )
    # the CLI and the action server import rasa_gpt3 without Rasa core: nothing is imported or patched
    assert _python("import sys, rasa_gpt3\nprint('rasa.core.http_interpreter' in sys.modules)").strip() == "False"
