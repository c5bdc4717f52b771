"""The serving calls' LRU cache of completions, keyed on (model, request body)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Hashable, Mapping, Optional, Tuple


class ResponseCache:
    """A thread-safe LRU cache of completions keyed on (model, request body)."""

    def __init__(self, maxsize: int = 1024):
        self.maxsize = max(0, int(maxsize))
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
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
