"""Scale-out on Rasa's own machinery: `SANIC_WORKERS=2 rasa run` with a Redis lock store (rasa_gpt3's
AtomicRedisLockStore: Rasa 3.6's RedisLockStore loses such messages) and Rasa's RedisTrackerStore on a real
redis-server, each worker with the GPT intent model and its own embedded local backend on the one project
`.rasa_gpt3/local`.

Conversations run at once, and inside each conversation two messages are sent at the same moment, so they may reach
different workers: the Redis lock must make the second wait for the first, or one worker's tracker write would drop
the other's turn. Every conversation must end with its own values, each turn once and in order, each slot set once.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import pytest

from rasa_gpt3.demo import free_port, rasa_run_command, start_server, wait_ready
from tests.concurrency.conftest import local_env, wait_for
from tests.e2e.conftest import RasaServer

pytestmark = pytest.mark.slow

WORKERS = 2
CONVERSATIONS = 8


def _served_by(request_log: Path) -> Dict[int, int]:
    """Chat completions per process id, from the local backends' shared request log."""
    counts: Dict[int, int] = {}
    if request_log.exists():
        for line in request_log.read_text(encoding="utf-8").splitlines():
            _, pid, route = line.split(" ", 2)
            if route.endswith("/chat/completions"):
                counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


@pytest.fixture(scope="module")
def workers(local_bot, redis_port):
    """`rasa run` with WORKERS Sanic workers sharing conversations through Redis; (server, request log)."""
    project = local_bot.project
    request_log = project / "scale_out_requests.log"
    endpoints = local_bot.write(
        "endpoints_scale_out.yml",
        (
            f'action_endpoint:\n  url: "{local_bot.actions_url}"\n'
            f"tracker_store:\n  type: redis\n  url: 127.0.0.1\n  port: {redis_port}\n  db: 0\n"
            f"lock_store:\n  type: rasa_gpt3.lock_store.AtomicRedisLockStore\n  url: 127.0.0.1\n  port: {redis_port}\n"
            "  db: 1\n"
        ),
    )
    port = free_port()
    server = start_server(
        "rasa run (workers)",
        rasa_run_command(port, local_bot.archive, endpoints),
        project,
        project / "rasa_workers.log",
        f"http://127.0.0.1:{port}",
        local_env(project, SANIC_WORKERS=str(WORKERS), RASA_GPT3_REQUEST_LOG=str(request_log)),
    )
    try:
        wait_ready(server, "/status")
        # each worker loads the model itself and warms its own local backend up: one request per worker
        wait_for(lambda: len(_served_by(request_log)) >= WORKERS, "every worker to load the model", timeout=600)
        yield RasaServer(server), request_log
    finally:
        server.stop()


def _transfer(rasa: RasaServer, number: int) -> List[str]:
    """One conversation: start a transfer, give amount and recipient at the same moment, confirm; the last answer."""
    sender = f"transfer-{number}"
    # texts of their own, so each worker's answer cache cannot stand in for the model
    assert rasa.say(sender, f"I want to transfer money ({number})") == ["How much would you like to send?"]
    amount, recipient = f"{number}17", f"Customer{number}"
    with ThreadPoolExecutor(2) as pool:
        both = list(
            pool.map(
                lambda text: rasa.say(sender, text),
                [f'/inform{{"amount": "{amount}"}}', f'/inform{{"recipient": "{recipient}"}}'],
            )
        )
    # whichever was second completed the form and got the confirmation question
    assert f"Send {amount} EUR to {recipient}?" in both[0] + both[1]
    return rasa.say(sender, f"yes please ({number})")


def _check_conversation(rasa: RasaServer, number: int) -> None:
    sender, amount, recipient = f"transfer-{number}", f"{number}17", f"Customer{number}"
    events = rasa.events(sender)
    users = [event["text"] for event in events if event["event"] == "user"]
    assert (users[0], users[-1], len(users)) == (f"I want to transfer money ({number})", f"yes please ({number})", 4)
    assert set(users[1:3]) == {f'/inform{{"amount": "{amount}"}}', f'/inform{{"recipient": "{recipient}"}}'}
    # each turn finished (the bot listened again) before the next user message was handled
    for before, event in zip(events, events[1:]):
        if event["event"] == "user" and event is not events[0]:
            assert before["event"] == "action" and before["name"] == "action_listen", f"{sender}: turns interleaved"
    slots: Dict[str, List[str]] = {}
    for event in events:
        if event["event"] == "slot" and event["name"] in ("amount", "recipient"):
            slots.setdefault(event["name"], []).append(event["value"])
    assert slots == {"amount": [amount], "recipient": [recipient]}
    assert [e["text"] for e in events if e["event"] == "bot"][-2:] == [
        f"Send {amount} EUR to {recipient}?",
        f"Done: {amount} EUR are on their way to {recipient}.",
    ]


def test_conversations_stay_consistent_across_workers_sharing_redis_and_the_local_backend(workers):
    rasa, request_log = workers
    warm_ups = _served_by(request_log)

    with ThreadPoolExecutor(CONVERSATIONS) as pool:
        finals = list(pool.map(lambda number: _transfer(rasa, number), range(CONVERSATIONS)))

    for number, final in enumerate(finals):
        assert final == [f"Done: {number}17 EUR are on their way to Customer{number}."]
        _check_conversation(rasa, number)
    # each worker loaded the model and warmed its own embedded backend up on the one .rasa_gpt3/local; then every
    # typed message reached the model exactly once, through whichever worker the kernel handed it to
    served = _served_by(request_log)
    assert len(warm_ups) == WORKERS and set(served) == set(warm_ups)
    assert sum(served.values()) - sum(warm_ups.values()) == 2 * CONVERSATIONS, served
    decided = [
        event["parse_data"]["gpt3"]
        for number in range(CONVERSATIONS)
        for event in rasa.events(f"transfer-{number}")
        if event["event"] == "user" and not event["text"].startswith("/")
    ]
    assert len(decided) == 2 * CONVERSATIONS
    assert all(record["outcome"] == "ok" and not record["cached"] for record in decided)
