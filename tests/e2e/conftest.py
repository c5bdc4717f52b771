"""End-to-end fixtures: example_bot served by real processes on 127.0.0.1, models on one local backend.

One session builds, once:
- a local backend in this process (an OpenAI-compatible server on a free port; the tests inject faults into it);
- a copy of example_bot whose intent, entities and response models are fine-tuned on that backend through
  `rasa_gpt3.finetune` (registry entries under the backend's host, as for any OpenAI-compatible server);
- two `rasa train` runs: example_bot's own config.yml (DIET + GPT3IntentClassifier in routing mode +
  GPT3EntityExtractor) and the same config without the rasa_gpt3 components (DIET-only);
- one action server (`python -m rasa_sdk`, what `rasa run actions` runs) and one `rasa run --enable-api` per model.
Every Rasa process, the action server and `rasa test` reach the backend through OPENAI_BASE_URL / OPENAI_API_KEY
(a dummy key: the local backend accepts any), so the tests can make it fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx
import pytest

from rasa_gpt3.demo import (
    Server,
    diet_only_config,
    free_port,
    http_json,
    log_tail,
    rasa_run_command,
    start_action_server,
    start_server,
    wait_ready,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_BOT = REPO / "example_bot"
DUMMY_KEY = "e2e-local-backend"
TRAIN_TIMEOUT = 900
# what example_bot's copy leaves out: anything a previous run wrote
NOT_COPIED = shutil.ignore_patterns("models", "results", ".rasa", ".rasa_gpt3", "gpt3_models.yml", "__pycache__")


def rasa_env(project: Path, base_url: str) -> Dict[str, str]:
    """The environment of every child process: the test backend as an OpenAI-compatible server, no telemetry."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("RASA_GPT3_LOCAL", "RASA_GPT3_FAULTS", "RASA_GPT3_STATE_DIR", "RASA_GPT3_FALLBACK_CONFIG")
    }
    env.update(
        {
            "OPENAI_API_KEY": DUMMY_KEY,
            "OPENAI_BASE_URL": base_url,
            "RASA_GPT3_PROJECT": str(project),
            "RASA_TELEMETRY_ENABLED": "false",
            "SANIC_HOST": "127.0.0.1",
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


@dataclass
class Backend:
    """The test's local backend: its URL and the controls the tests use."""

    server: Any
    base_url: str

    @property
    def root(self) -> str:
        """The URL without /v1, for the /_local/* routes."""
        return self.base_url[: -len("/v1")]

    def set_faults(self, spec: Optional[str]) -> None:
        """Makes every request fail as `spec` says (see rasa_gpt3.local.faults); None clears."""
        httpx.post(self.root + "/_local/faults", json={"faults": spec or ""}, timeout=5).raise_for_status()


@dataclass
class Bot:
    """example_bot's copy, its fine-tuned models and, once trained, its Rasa model archives."""

    project: Path
    env: Dict[str, str]
    models: Dict[str, str]
    archives: Dict[str, Path] = field(default_factory=dict)

    def run(self, *args: str, log: str, timeout: float = TRAIN_TIMEOUT) -> subprocess.CompletedProcess:
        """Runs `python -m rasa ARGS` in the project; the output goes to `log` under the project."""
        with open(self.project / log, "wb") as out:
            return subprocess.run(
                [sys.executable, "-m", "rasa", *args],
                cwd=self.project,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
            )

    def train(self, name: str, config: str) -> Path:
        """`rasa train --config CONFIG` into models/NAME.tar.gz."""
        result = self.run(
            "train", "--config", config, "--fixed-model-name", name, "--out", "models", log=f"train_{name}.log"
        )
        archive = self.project / "models" / f"{name}.tar.gz"
        assert result.returncode == 0 and archive.exists(), log_tail(self.project / f"train_{name}.log", 10)
        return archive


@dataclass
class RasaServer:
    """A `rasa run --enable-api` process: the REST channel and the HTTP API."""

    server: Server

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT."""
        return self.server.url

    def say(self, sender: str, text: str) -> List[str]:
        """Sends `text` over the REST channel; the bot's answers (texts)."""
        answers = http_json("POST", f"{self.url}/webhooks/rest/webhook", {"sender": sender, "message": text}) or []
        return [answer.get("text") for answer in answers if answer.get("text")]

    def tracker(self, sender: str) -> Dict[str, Any]:
        """The conversation's tracker."""
        return http_json("GET", f"{self.url}/conversations/{sender}/tracker")

    def events(self, sender: str) -> List[Dict[str, Any]]:
        """All events of the conversation, reverted ones included."""
        return self.tracker(sender).get("events") or []

    def parse(self, text: str) -> Dict[str, Any]:
        """NLU only (POST /model/parse)."""
        return http_json("POST", f"{self.url}/model/parse", {"text": text})


def _warm_up(backend: Backend, model: str, record: Dict[str, Any]) -> None:
    """One request, so the backend has loaded `model` before a Rasa process asks it within a 2 s budget."""
    body = {"messages": record["messages"][:-1]} if "messages" in record else {"prompt": record["prompt"]}
    route = "/chat/completions" if "messages" in record else "/completions"
    httpx.post(
        backend.base_url + route,
        json={"model": model, "max_tokens": 1, **body},
        headers={"Authorization": f"Bearer {DUMMY_KEY}"},
        timeout=120,
    ).raise_for_status()


@pytest.fixture(scope="session")
def e2e_backend(tmp_path_factory):
    """A local backend in this process on a free 127.0.0.1 port."""
    from rasa_gpt3.local.embedded import EmbeddedServer

    server = EmbeddedServer(tmp_path_factory.mktemp("e2e-backend")).start()
    yield Backend(server, server.base_url)
    server.stop()


@pytest.fixture(scope="session")
def e2e_project(tmp_path_factory, e2e_backend) -> Bot:
    """example_bot copied, its intent, entities and response models fine-tuned on the backend (no Rasa model yet)."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.finetune import ensure_fine_tuned
    from rasa_gpt3.settings import Settings

    project = tmp_path_factory.mktemp("e2e") / "example_bot"
    shutil.copytree(EXAMPLE_BOT, project, ignore=NOT_COPIED)
    diet_only_config(project, project / "config_diet_only.yml")
    settings = Settings(project_dir=project, api_key=DUMMY_KEY, base_url=e2e_backend.base_url)
    loaded = load_project(project)
    models = {}
    for task in ("intent", "entities", "response"):
        exported = export_task(task, loaded.nlu, loaded.domain, loaded.stories)
        models[task] = ensure_fine_tuned(settings, exported, project_name=loaded.name).model
        _warm_up(e2e_backend, models[task], exported.train[0])
    return Bot(project, rasa_env(project, e2e_backend.base_url), models)


@pytest.fixture(scope="session")
def e2e_bot(e2e_project: Bot) -> Bot:
    """`e2e_project` with both pipelines trained by `rasa train`."""
    bot = e2e_project
    bot.archives["diet_only"] = bot.train("diet_only", "config_diet_only.yml")
    # the second run restores DIET, ResponseSelector and the policies from Rasa's cache
    bot.archives["bot"] = bot.train("bot", "config.yml")
    return bot


@pytest.fixture(scope="session")
def e2e_servers(e2e_bot: Bot):
    """The action server and one Rasa server per pipeline, started together (their model loads overlap)."""
    project = e2e_bot.project
    actions = start_action_server(project, project / "actions.log", e2e_bot.env)
    started = [actions]
    try:
        (project / "endpoints_e2e.yml").write_text(
            f'action_endpoint:\n  url: "{actions.url}/webhook"\n', encoding="utf-8"
        )
        servers = {}
        for name, archive in e2e_bot.archives.items():
            port = free_port()
            server = start_server(
                f"rasa run ({name})",
                rasa_run_command(port, archive, "endpoints_e2e.yml"),
                project,
                project / f"rasa_{name}.log",
                f"http://127.0.0.1:{port}",
                e2e_bot.env,
            )
            started.append(server)
            servers[name] = RasaServer(server)
        wait_ready(actions, "/health")
        for server in servers.values():
            wait_ready(server.server, "/status")
        yield servers
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def sender(request) -> str:
    """A conversation id of its own for each test."""
    return f"{request.node.name}-{time.monotonic_ns()}"
