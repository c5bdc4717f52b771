"""Shared fixtures: a real local backend on 127.0.0.1 with the official SDK, corpora paths, small data helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository next to shared/, which holds the third-party corpora
CORPORA = REPO.parent / "shared" / "corpora"
BANKING77 = CORPORA / "banking77" / "banking_data"
FINANCIAL_DEMO = CORPORA / "financial-demo"


@dataclass
class LocalBackend:
    """A running local backend: where it is, its state directory, a ready SDK client, and test controls."""

    base_url: str
    state_dir: Path
    client: openai.OpenAI
    server: Any

    def make_client(self, **options: Any) -> openai.OpenAI:
        """Another SDK client for this server (e.g. with a timeout, max_retries or default_headers)."""
        return openai.OpenAI(api_key="local", base_url=self.base_url, **options)

    def make_async_client(self, **options: Any) -> openai.AsyncOpenAI:
        """An async SDK client for this server."""
        return openai.AsyncOpenAI(api_key="local", base_url=self.base_url, **options)

    @property
    def root_url(self) -> str:
        """The server's root (without /v1), for the /_local/* routes."""
        return self.base_url[: -len("/v1")]

    def stats(self) -> Dict[str, Any]:
        """Request counts: {'requests': total, 'by_route': {...}} since start or the last reset_stats()."""
        return httpx.get(self.root_url + "/_local/stats", timeout=5).json()

    def reset_stats(self) -> None:
        """Zeroes the request counters."""
        httpx.post(self.root_url + "/_local/stats/reset", timeout=5).raise_for_status()

    def set_faults(self, spec: Optional[str]) -> None:
        """Makes the server misbehave (see rasa_gpt3.local.faults), e.g. 'status=500' or 'latency=0.3'; None clears."""
        httpx.post(self.root_url + "/_local/faults", json={"faults": spec or ""}, timeout=5).raise_for_status()

    def upload_records(self, records: Iterable[Dict[str, Any]], name: str = "train.jsonl") -> str:
        """Uploads fine-tune records as a JSONL file; returns the file id."""
        data = "\n".join(json.dumps(record) for record in records).encode("utf-8")
        return self.client.files.create(file=(name, data), purpose="fine-tune").id

    def fine_tune(
        self, records: List[Dict[str, Any]], model: str = "gpt-4o-mini", timeout: float = 120, **options: Any
    ):
        """Uploads `records`, runs a fine-tuning job to its end and returns the finished job."""
        import time

        job = self.client.fine_tuning.jobs.create(model=model, training_file=self.upload_records(records), **options)
        deadline = time.monotonic() + timeout
        while job.status not in ("succeeded", "failed", "cancelled"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job.id} still {job.status} after {timeout} s")
            time.sleep(0.1)
            job = self.client.fine_tuning.jobs.retrieve(job.id)
        return job


def _start_backend(state_dir: Path, **options: Any) -> LocalBackend:
    from rasa_gpt3.local.embedded import EmbeddedServer

    options.setdefault("header_faults", True)  # tests inject faults per request with the X-Rasa-GPT3-Fault header
    server = EmbeddedServer(state_dir, **options).start()
    client = openai.OpenAI(api_key=options.get("token") or "local", base_url=server.base_url, max_retries=0, timeout=30)
    return LocalBackend(base_url=server.base_url, state_dir=state_dir, client=client, server=server)


@pytest.fixture
def local_backend(tmp_path: Path):
    """A fresh local backend on a free 127.0.0.1 port with a temporary state directory (function-scoped).

    `.client` is an openai.OpenAI with max_retries=0 and a 30 s timeout (make_client(...) for others).
    """
    backend = _start_backend(tmp_path / "local-state")
    yield backend
    backend.client.close()
    backend.server.stop()


@pytest.fixture(scope="session")
def shared_local_backend(tmp_path_factory):
    """One local backend for a whole test session (cheaper; do not rely on it being empty)."""
    backend = _start_backend(tmp_path_factory.mktemp("shared-local-state"))
    yield backend
    backend.client.close()
    backend.server.stop()


@pytest.fixture
def start_local_backend(tmp_path: Path):
    """A factory: start_local_backend(state_dir=None, token=None, faults=None, max_upload_bytes=...) -> LocalBackend."""
    started: List[LocalBackend] = []

    def start(state_dir: Optional[Path] = None, **options: Any) -> LocalBackend:
        backend = _start_backend(Path(state_dir) if state_dir else tmp_path / f"local-state-{len(started)}", **options)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.client.close()
        backend.server.stop()


SMALL_INTENTS = {
    "greet": ["hello there", "hi", "good morning", "hey, how are you", "hello bot", "good evening to you"],
    "goodbye": ["bye", "see you later", "goodbye for now", "talk to you tomorrow", "have a nice day, bye", "cya"],
    "check_balance": [
        "what is my balance",
        "how much money do I have",
        "show my account balance",
        "balance please",
        "how much is left on my account",
        "what's in my checking account",
    ],
    "transfer_money": [
        "send money to my friend",
        "transfer 50 dollars to Anna",
        "I want to make a transfer",
        "pay my rent to the landlord",
        "move money to savings",
        "wire funds to John",
    ],
}


def small_intent_records(fmt: str = "chat"):
    """24 intent fine-tune records (4 intents, 6 texts each) in `fmt`, built by rasa_gpt3.prompts."""
    from rasa_gpt3 import prompts

    return [prompts.intent_record(text, intent, fmt) for intent, texts in SMALL_INTENTS.items() for text in texts]


@pytest.fixture
def intent_records():
    """A function fmt -> 24 small intent records (4 intents: greet, goodbye, check_balance, transfer_money)."""
    return small_intent_records


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch):
    """Settings for a throw-away bot project that use the embedded local backend (no API key in the env)."""
    from rasa_gpt3.local.embedded import stop_server
    from rasa_gpt3.settings import Settings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    settings = Settings.from_env(tmp_path / "bot")
    yield settings
    stop_server(settings.local_state_dir)
