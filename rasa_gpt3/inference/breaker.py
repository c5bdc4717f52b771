"""The circuit breaker of the serving calls: after repeated failures the API is skipped for a cool-down."""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional


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
