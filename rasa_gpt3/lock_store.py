"""`rasa_gpt3.lock_store.AtomicRedisLockStore`: Rasa 3.6's ticket lock on Redis, with every step atomic.

Several Rasa processes (`SANIC_WORKERS=N`, or replicas behind one URL) must handle one conversation's messages one at
a time, in the order they arrived, or two processes read the same tracker and one overwrites the other's turn. That is
the lock store's job; Rasa 3.6's RedisLockStore does it with read-modify-write sequences (get the lock's JSON, change
it, set it back) that are not atomic across processes. When two messages of one conversation arrive at two workers at
once, one worker's write can drop the other's ticket, and that message fails with "LockError: Could not acquire lock
for conversation_id" (the user gets no answer; RasaHQ/rasa#9213; Rasa fixed it after 3.6 with `concurrent_mode`).

Here each step is one Lua script, which Redis runs atomically: issuing a ticket (a counter and a sorted set of
waiting tickets with their deadlines), checking whose turn it is (expired tickets of crashed holders are dropped on
the way), and returning a ticket (the keys go when nobody waits). Tickets are served in the order they were issued,
as in Rasa's TicketLock. Waiting processes poll every `poll_seconds` (default 0.02) rather than Rasa's 1 s, so the
second of two messages sent together is not held a second longer than its turn. Time comes from the Redis server's
clock, so the processes' clocks need not agree.

```yaml
# endpoints.yml
lock_store:
  type: rasa_gpt3.lock_store.AtomicRedisLockStore
  url: 127.0.0.1          # the Redis host; port, db, password, use_ssl, key_prefix, socket_timeout as for `type: redis`
  port: 6379
  db: 1
```
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from contextlib import asynccontextmanager
from typing import Any, AsyncGenerator, Optional

from rasa.core.lock import Ticket, TicketLock
from rasa.core.lock_store import DEFAULT_SOCKET_TIMEOUT_IN_SECONDS, LOCK_LIFETIME, LockError, LockStore
from rasa.utils.endpoints import EndpointConfig

logger = logging.getLogger(__name__)

DEFAULT_KEY_PREFIX = "gpt3_lock:"
DEFAULT_POLL_SECONDS = 0.02

# redis.replicate_commands(): writes after TIME need it before Redis 5 (a no-op since)
# KEYS: counter, waiting (sorted set: ticket -> ticket), deadlines (hash: ticket -> ms). ARGV: lifetime in ms
_ISSUE = """
redis.replicate_commands()
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ticket = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], ticket, ticket)
redis.call('HSET', KEYS[3], ticket, now_ms + tonumber(ARGV[1]))
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, 2 * tonumber(ARGV[1])) end
return ticket
"""

# 1: it is this ticket's turn; 0: an earlier ticket is being served; -1: this ticket expired (or never existed)
_TURN = """
redis.replicate_commands()
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
while true do
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not head then return -1 end
  local deadline = tonumber(redis.call('HGET', KEYS[3], head) or '0')
  if deadline < now_ms then
    redis.call('ZREM', KEYS[2], head)
    redis.call('HDEL', KEYS[3], head)
  elseif head == ARGV[1] then
    return 1
  else
    if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
    return 0
  end
end
"""

# returns how many tickets still wait; with none left the lock's keys are deleted
_RETURN = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local waiting = redis.call('ZCARD', KEYS[2])
if waiting == 0 then redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
return waiting
"""


class AtomicRedisLockStore(LockStore):
    """Rasa's ticket lock for conversations, kept in Redis and changed only by atomic scripts."""

    def __init__(
        self,
        endpoint_config: Optional[EndpointConfig] = None,
        host: str = "localhost",
        port: int = 6379,
        db: int = 1,
        password: Optional[str] = None,
        use_ssl: bool = False,
        key_prefix: Optional[str] = None,
        socket_timeout: float = DEFAULT_SOCKET_TIMEOUT_IN_SECONDS,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
    ) -> None:
        """Connects to Redis; from endpoints.yml Rasa passes `endpoint_config` (`url` is the host)."""
        import redis

        if endpoint_config is not None:
            options: dict = dict(endpoint_config.kwargs)
            host = endpoint_config.url or host
            port = options.get("port", port)
            db = options.get("db", db)
            password = options.get("password", password)
            use_ssl = options.get("use_ssl", use_ssl)
            key_prefix = options.get("key_prefix", key_prefix)
            socket_timeout = options.get("socket_timeout", socket_timeout)
            poll_seconds = options.get("poll_seconds", poll_seconds)
        self.red = redis.StrictRedis(
            host=host,
            port=int(port),
            db=int(db),
            password=password,
            ssl=bool(use_ssl),
            socket_timeout=float(socket_timeout),
        )
        if key_prefix and not (isinstance(key_prefix, str) and key_prefix.isalnum()):
            raise LockError(f"AtomicRedisLockStore: key_prefix must be alphanumeric, not {key_prefix!r}")
        self.key_prefix = f"{key_prefix}:{DEFAULT_KEY_PREFIX}" if key_prefix else DEFAULT_KEY_PREFIX
        self.poll_seconds = float(poll_seconds)
        self._issue = self.red.register_script(_ISSUE)
        self._turn = self.red.register_script(_TURN)
        self._return = self.red.register_script(_RETURN)
        super().__init__()

    def _keys(self, conversation_id: str) -> list:
        base = self.key_prefix + conversation_id
        return [f"{base}:counter", f"{base}:waiting", f"{base}:deadlines"]

    def issue_ticket(self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME) -> int:
        """A new ticket for `conversation_id`, valid for `lock_lifetime` seconds, behind every earlier one."""
        try:
            return int(self._issue(keys=self._keys(conversation_id), args=[int(lock_lifetime * 1000)]))
        except Exception as error:  # Redis down or refusing: Rasa expects LockError here
            raise LockError(f"Error while acquiring lock. Error:\n{error}") from error

    def cleanup(self, conversation_id: str, ticket_number: int) -> None:
        """Returns the ticket (the lock's keys go when nobody else waits)."""
        self._return(keys=self._keys(conversation_id), args=[ticket_number])

    async def _acquire_lock(self, conversation_id: str, ticket: int, wait_time_in_seconds: float) -> TicketLock:
        keys = self._keys(conversation_id)
        while True:
            turn = int(self._turn(keys=keys, args=[ticket]))
            if turn == 1:
                return self.get_lock(conversation_id) or TicketLock(conversation_id)
            if turn == -1:
                raise LockError(f"Could not acquire lock for conversation_id '{conversation_id}'.")
            await asyncio.sleep(self.poll_seconds)

    @asynccontextmanager
    async def lock(
        self, conversation_id: str, lock_lifetime: float = LOCK_LIFETIME, wait_time_in_seconds: float = 1
    ) -> AsyncGenerator[TicketLock, None]:
        """Holds the lock of `conversation_id` for the block; waits (polling every `poll_seconds`) for its turn."""
        ticket = self.issue_ticket(conversation_id, lock_lifetime)
        try:
            yield await self._acquire_lock(conversation_id, ticket, wait_time_in_seconds)
        finally:
            self.cleanup(conversation_id, ticket)

    def get_lock(self, conversation_id: str) -> Optional[TicketLock]:
        """A snapshot of the lock's waiting tickets (for inspection; the lock itself never uses it)."""
        _, waiting, deadlines = self._keys(conversation_id)
        numbers = [int(number) for number in self.red.zrange(waiting, 0, -1)]
        if not numbers:
            return None
        expires = self.red.hmget(deadlines, numbers)
        tickets = [Ticket(number, float(deadline or 0) / 1000) for number, deadline in zip(numbers, expires)]
        return TicketLock(conversation_id, tickets=deque(tickets))

    def delete_lock(self, conversation_id: str) -> None:
        """Deletes the lock's keys."""
        self.red.delete(*self._keys(conversation_id))

    def save_lock(self, lock: Any) -> None:
        """Not supported: a lock is only changed by the atomic scripts."""
        raise NotImplementedError("AtomicRedisLockStore changes locks only through its atomic scripts")
