"""One Rasa process with its NLU in rasa_gpt3's NLU server: real `rasa run`, real `python -m rasa_gpt3.nlu_server`,
a real action server, the GPT intent model deciding every message on an embedded local backend that answers each
model call after MODEL_LATENCY seconds.

What is proven: a message that needs no model call is answered while another conversation waits for the model; the
NLU server answers within its budget even when every thread is busy; a hung NLU server costs a conversation at most
the interpreter's timeout, after which the message is nlu_fallback with its text and action_gpt3_fallback handles it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict

import pytest

from rasa_gpt3.demo import Server, free_port, http_json, rasa_run_command, start_server, wait_ready
from rasa_gpt3.nlu_server.fallback import RECORD_KEY
from tests.concurrency.conftest import local_env, wait_for
from tests.e2e.conftest import RasaServer

pytestmark = pytest.mark.slow

TOKEN = "nlu-s3cret"
MODEL_LATENCY = 1.0
# two threads and a budget under two model calls: a third message at once waits for a thread and misses it
SERVER_THREADS = 2
SERVER_TIMEOUT = 1.9
CLIENT_TIMEOUT = 3.0
GREETING = (
    "Hello! I'm the Acme Bank assistant. I can check your balance, send money, block a card, give exchange "
    "rates and find a branch."
)
BALANCE = "Your checking account balance is 2,480.15 EUR."


@dataclass
class Deployment:
    """Rasa core, the NLU server it sends every message to, and that server's process."""

    core: RasaServer
    nlu: Server

    def nlu_status(self) -> Dict[str, Any]:
        """GET /status of the NLU server."""
        return http_json("GET", f"{self.nlu.url}/status?token={TOKEN}", timeout=10)

    def nlu_parse(self, text: str, token: str = TOKEN) -> Dict[str, Any]:
        """POST /model/parse on the NLU server itself."""
        return http_json("POST", f"{self.nlu.url}/model/parse?token={token}", {"text": text}, timeout=30)


@pytest.fixture(scope="module")
def deployment(local_bot):
    """The NLU server (its model answering after MODEL_LATENCY s) and `rasa run` reaching it through endpoints.yml."""
    project = local_bot.project
    nlu_port, core_port = free_port(), free_port()
    endpoints = local_bot.write(
        "endpoints_nlu_test.yml",
        (
            f'action_endpoint:\n  url: "{local_bot.actions_url}"\n'
            f'nlu:\n  url: "http://127.0.0.1:{nlu_port}"\n  token: "{TOKEN}"\n  timeout: {CLIENT_TIMEOUT}\n'
        ),
    )
    nlu = start_server(
        "nlu server",
        [
            sys.executable,
            "-m",
            "rasa_gpt3.nlu_server",
            "--model",
            str(local_bot.archive),
            "--port",
            str(nlu_port),
            "--threads",
            str(SERVER_THREADS),
            "--timeout",
            str(SERVER_TIMEOUT),
            "--token",
            TOKEN,
        ],
        project,
        project / "nlu_server.log",
        f"http://127.0.0.1:{nlu_port}",
        local_env(project, RASA_GPT3_FAULTS=f"latency={MODEL_LATENCY},path=/v1/chat"),
    )
    core = start_server(
        "rasa run",
        rasa_run_command(core_port, local_bot.archive, endpoints),
        project,
        project / "rasa_nlu_server.log",
        f"http://127.0.0.1:{core_port}",
        local_env(project),
    )
    try:
        wait_ready(nlu, "/")
        wait_ready(core, "/status")
        yield Deployment(RasaServer(core), nlu)
    finally:
        core.stop()
        nlu.stop()


def _user_events(core: RasaServer, sender: str):
    return [event for event in core.events(sender) if event.get("event") == "user"]


def test_a_message_needing_no_model_call_is_answered_while_another_conversation_waits_for_the_model(deployment):
    finished: Dict[str, Any] = {}

    def say(sender: str, text: str) -> None:
        answers = deployment.core.say(sender, text)
        finished[sender] = (time.monotonic(), answers)

    waiting = threading.Thread(target=say, args=("waits-for-the-model", "tell me my account balance"))
    waiting.start()
    wait_for(lambda: deployment.nlu_status()["in_flight"] >= 1, "the NLU server to start on the first message")
    say("needs-no-model", "/greet")  # an intent shortcut: the GPT component does not call the model
    waiting.join(timeout=60)

    assert finished["needs-no-model"][1] == [GREETING]
    assert finished["waits-for-the-model"][1] == [BALANCE]
    # with the pipeline inside Rasa's event loop, the greeting would have waited for the model's answer
    assert finished["needs-no-model"][0] < finished["waits-for-the-model"][0]
    (user,) = _user_events(deployment.core, "waits-for-the-model")
    record = user["parse_data"]["gpt3"]
    assert user["parse_data"]["intent"]["name"] == "check_balance"
    assert record["decided"] and record["outcome"] == "ok" and not record["cached"]


def test_the_nlu_server_answers_within_its_budget_when_every_thread_is_busy(deployment):
    texts = [f"how much money do I have on account {number}?" for number in range(SERVER_THREADS + 1)]
    with ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(deployment.nlu_parse, texts))

    outcomes = sorted((result.get(RECORD_KEY) or {}).get("outcome", "parsed") for result in results)
    assert outcomes == ["parsed"] * SERVER_THREADS + ["timeout"]
    (late,) = [result for result in results if RECORD_KEY in result]
    assert late[RECORD_KEY] == {"outcome": "timeout", "source": "server", "budget": SERVER_TIMEOUT}
    assert late["intent"] == {"name": "nlu_fallback", "confidence": 0.0} and late["text"] in texts
    assert {result["text"] for result in results} == set(texts)
    with pytest.raises(urllib.error.HTTPError) as refused:
        deployment.nlu_parse("hello", token="wrong")
    assert refused.value.code == 401


def test_a_hung_nlu_server_degrades_to_nlu_fallback_and_action_gpt3_fallback_answers(deployment):
    os.kill(deployment.nlu.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        answers = deployment.core.say("nlu-server-hung", "I lost my credit card")
        seconds = time.monotonic() - started
    finally:
        os.kill(deployment.nlu.process.pid, signal.SIGCONT)

    # Rasa's own interpreter waits 300 s (aiohttp's default) for a server that accepted the connection
    assert seconds < 60
    first = _user_events(deployment.core, "nlu-server-hung")[0]
    assert first["text"] == "I lost my credit card"
    assert first["parse_data"]["intent"] == {"name": "nlu_fallback", "confidence": 0.0}
    assert first["parse_data"][RECORD_KEY] == {"outcome": "timeout", "source": "client", "budget": CLIENT_TIMEOUT}
    actions = [event.get("name") for event in deployment.core.events("nlu-server-hung") if event["event"] == "action"]
    assert "action_gpt3_fallback" in actions and answers
    # the server is back for the next message
    assert deployment.core.say("nlu-server-back", "/greet") == [GREETING]
