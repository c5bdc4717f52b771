"""AtomicRedisLockStore on a real redis-server: one holder at a time across processes, first come first served, a
crashed holder's ticket expires, and Rasa creates it from endpoints.yml and allows several Sanic workers with it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
import redis
from rasa.core.lock_store import LockStore
from rasa.utils.endpoints import EndpointConfig

from rasa_gpt3.lock_store import AtomicRedisLockStore

PROCESSES, ROUNDS = 3, 25


def test_one_holder_at_a_time_across_processes(redis_port):
    """Each process adds 1 to a Redis counter by reading it, yielding, and writing it back, under the lock: a second
    holder at the same time would lose an increment."""
    counter = "test:counter"
    redis.Redis(port=redis_port).delete(counter)
    script = textwrap.dedent(f"""
        import asyncio, redis
        from rasa_gpt3.lock_store import AtomicRedisLockStore
        store = AtomicRedisLockStore(port={redis_port})
        red = redis.Redis(port={redis_port})
        async def main():
            for _ in range({ROUNDS}):
                async with store.lock("shared-conversation"):
                    value = int(red.get("{counter}") or 0)
                    await asyncio.sleep(0.002)
                    red.set("{counter}", value + 1)
        asyncio.run(main())
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(PROCESSES)]
    assert [process.wait(timeout=300) for process in processes] == [0] * PROCESSES
    assert int(redis.Redis(port=redis_port).get(counter)) == PROCESSES * ROUNDS
    # nobody waits any more: the lock's keys are gone
    assert AtomicRedisLockStore(port=redis_port).get_lock("shared-conversation") is None


def test_tickets_are_served_in_the_order_they_were_issued(redis_port):
    store = AtomicRedisLockStore(port=redis_port)
    order = []

    async def message(number: int, holding: asyncio.Event) -> None:
        async with store.lock("fifo"):
            order.append(number)
            await holding.wait()

    async def main() -> None:
        holding = asyncio.Event()
        tasks = []
        for number in range(5):
            tasks.append(asyncio.create_task(message(number, holding)))
            await asyncio.sleep(0.05)  # each message takes its ticket after the previous one
        assert order == [0] and len(store.get_lock("fifo").tickets) == 5
        holding.set()
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert order == [0, 1, 2, 3, 4]


def test_the_ticket_of_a_holder_that_died_expires(redis_port):
    store = AtomicRedisLockStore(port=redis_port)
    store.issue_ticket("crashed", lock_lifetime=0.3)  # taken and never returned, as by a killed worker

    async def main() -> bool:
        async with store.lock("crashed"):
            return True

    assert asyncio.run(asyncio.wait_for(main(), timeout=10))


def test_rasa_builds_it_from_endpoints_yml_and_runs_several_workers_with_it(redis_port, monkeypatch):
    from rasa.core.utils import number_of_sanic_workers

    config = EndpointConfig.from_dict(
        {
            "type": "rasa_gpt3.lock_store.AtomicRedisLockStore",
            "url": "127.0.0.1",
            "port": redis_port,
            "db": 2,
            "key_prefix": "bot1",
        }
    )
    store = LockStore.create(config)
    assert isinstance(store, AtomicRedisLockStore) and store.key_prefix == "bot1:gpt3_lock:"
    assert store.red.connection_pool.connection_kwargs["db"] == 2
    monkeypatch.setenv("SANIC_WORKERS", "3")
    assert number_of_sanic_workers(config) == 3


def test_redis_down_is_rasa_s_lock_error(redis_port):
    from rasa.core.lock_store import LockError

    from rasa_gpt3.demo import free_port

    with pytest.raises(LockError):
        AtomicRedisLockStore(port=free_port(), socket_timeout=1).issue_ticket("nobody-home")
