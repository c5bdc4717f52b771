"""Fault injection for the local backend, so tests of other components can make the model API misbehave.

A fault spec is a comma-separated list of items; several specs are joined with ';'::

    latency=0.3            wait 0.3 s, then answer normally
    status=429             answer 429 (with Retry-After / retry-after-ms, see retry_after) in OpenAI's error shape
    status=500             any status >= 400 works the same way
    retry_after=0.1        seconds announced with a 429/503 (default 0.1)
    hang=30                wait 30 s before answering (longer than the client's timeout)
    drop                   close the connection without any response
    garbage                a completion whose text is neither a known label nor JSON (completions routes only)
    p=0.25                 apply the spec to this share of matching requests only
    first=2                per request (header): only the first 2 attempts of a request, counted with the SDK's
                           `x-stainless-retry-count`, so `status=500,first=1` fails once and the retry succeeds;
                           by configuration: only the first 2 matching requests this server sees
    path=/v1/chat          apply only to request paths starting with this prefix
    refuse_fine_tune       POST /v1/fine_tuning/jobs refuses as a provider does that no longer fine-tunes: `=access`
                           (the default) a 403 for an organisation without fine-tuning access, `=model` a 400
                           `model_not_available` for a base model that can no longer be fine-tuned (always applies;
                           p and first do not count it)

Sources: the server option `faults=...` (`rasa-gpt3 local serve --faults`), the environment variable
RASA_GPT3_FAULTS (read on every request, so a test can change it while the embedded server runs), POST
/_local/faults {"faults": "..."} at run time, and the request header `X-Rasa-GPT3-Fault` — the header only where it
is enabled (the server option `header_faults=True`, as the tests' backends have it, or RASA_GPT3_HEADER_FAULTS=1,
read on every request): any client can send a header, so by default it is ignored. A request suffers its faults
only after its bearer token was checked.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import List, Optional, Tuple

HEADER = "X-Rasa-GPT3-Fault"
ENV_FAULTS = "RASA_GPT3_FAULTS"
ENV_HEADER_FAULTS = "RASA_GPT3_HEADER_FAULTS"
RETRY_COUNT_HEADER = "x-stainless-retry-count"
GARBAGE_TEXT = "~~ garbled §§ output ~~"


class FaultSpecError(ValueError):
    """A fault spec that cannot be parsed."""


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec."""

    latency: float = 0.0
    status: Optional[int] = None
    retry_after: float = 0.1
    hang: float = 0.0
    drop: bool = False
    garbage: bool = False
    probability: float = 1.0
    first: Optional[int] = None
    path: Optional[str] = None
    refuse_fine_tune: Optional[str] = None
    text: str = field(default="", compare=False)

    def matches_path(self, path: str) -> bool:
        """Whether this fault applies to requests for `path`."""
        return self.path is None or path.startswith(self.path)


def _number(key: str, value: str, kind=float):
    try:
        number = kind(value)
    except ValueError:
        raise FaultSpecError(f"fault '{key}' needs a number, got '{value}'") from None
    if number < 0:
        raise FaultSpecError(f"fault '{key}' must not be negative")
    return number


@lru_cache(maxsize=256)
def parse_faults(spec: str) -> Tuple[Fault, ...]:
    """Parses a fault spec (see the module docstring); raises FaultSpecError with a one-line reason."""
    faults: List[Fault] = []
    for part in (spec or "").split(";"):
        part = part.strip()
        if not part:
            continue
        values = {}
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            key, _, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if key in ("drop", "garbage"):
                values[key] = True
            elif key in ("latency", "hang", "retry_after"):
                values[key] = _number(key, value)
            elif key == "status":
                status = _number(key, value, int)
                if not 400 <= status <= 599:
                    raise FaultSpecError(f"fault status must be 400..599, got {status}")
                values["status"] = status
            elif key in ("p", "probability"):
                probability = _number(key, value)
                if probability > 1:
                    raise FaultSpecError("fault probability must be between 0 and 1")
                values["probability"] = probability
            elif key == "first":
                values["first"] = _number(key, value, int)
            elif key == "refuse_fine_tune":
                if value not in ("", "access", "model"):
                    raise FaultSpecError(f"refuse_fine_tune is 'access' or 'model', not '{value}'")
                values[key] = value or "access"
            elif key == "path":
                if not value.startswith("/"):
                    raise FaultSpecError("fault path must start with '/'")
                values["path"] = value
            else:
                raise FaultSpecError(
                    f"unknown fault '{key}' (use latency, status, retry_after, hang, drop, garbage, p, first, path, "
                    "refuse_fine_tune)"
                )
        faults.append(Fault(text=part, **values))
    return tuple(faults)


class FaultPlan:
    """The configured faults of one server and the per-request header; decides what a request suffers."""

    def __init__(
        self, spec: Optional[str] = None, seed: Optional[int] = None, header_faults: Optional[bool] = None
    ) -> None:
        self._configured = parse_faults(spec or "")
        self._header_faults = header_faults
        self._lock = threading.Lock()
        self._seen: dict = {}
        self._random = random.Random(seed)

    def configure(self, spec: Optional[str]) -> None:
        """Replaces the server-configured faults (validated first) and resets their 'first N' counters."""
        faults = parse_faults(spec or "")
        with self._lock:
            self._configured = faults
            self._seen = {}

    @property
    def header_enabled(self) -> bool:
        """Whether the X-Rasa-GPT3-Fault header counts: the server option, else RASA_GPT3_HEADER_FAULTS=1."""
        if self._header_faults is not None:
            return self._header_faults
        return os.environ.get(ENV_HEADER_FAULTS, "").strip() == "1"

    @property
    def configured(self) -> str:
        """The server-configured spec as text."""
        return ";".join(fault.text for fault in self._configured)

    def for_request(self, path: str, header: Optional[str], retry_count: Optional[str]) -> List[Fault]:
        """The faults this request suffers (header faults first, if enabled, then configured and environment ones)."""
        chosen: List[Fault] = []
        attempt = int(retry_count) if retry_count and retry_count.isdigit() else 0
        for fault in parse_faults(header or "") if self.header_enabled else ():
            if not fault.matches_path(path):
                continue
            if fault.first is not None and attempt >= fault.first:
                continue
            if fault.probability < 1 and self._random.random() >= fault.probability:
                continue
            chosen.append(fault)
        environment = parse_faults(os.environ.get(ENV_FAULTS, ""))
        with self._lock:
            for source, faults in (("config", self._configured), ("env", environment)):
                for index, fault in enumerate(faults):
                    if not fault.matches_path(path):
                        continue
                    if fault.first is not None:
                        key = (source, fault.text, index)
                        seen = self._seen.get(key, 0)
                        if seen >= fault.first:
                            continue
                        self._seen[key] = seen + 1
                    if fault.probability < 1 and self._random.random() >= fault.probability:
                        continue
                    chosen.append(fault)
        return chosen

    def fine_tune_refusal(self, header: Optional[str]) -> Optional[str]:
        """'access' or 'model' when the request header, the configuration or the environment refuses fine-tunes."""
        for spec in (header or "", self.configured, os.environ.get(ENV_FAULTS, "")):
            for fault in parse_faults(spec):
                if fault.refuse_fine_tune:
                    return fault.refuse_fine_tune
        return None
