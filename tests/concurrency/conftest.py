"""Fixtures for the concurrency tests: example_bot with the GPT intent model deciding every message, every process
with its own embedded local backend on the project's `.rasa_gpt3/local` (as `rasa run` uses it without an API key).

Built once per session: a copy of example_bot whose intent, entities and response models are fine-tuned on the local
backend, `rasa train --config config_gpt3_only.yml`, and an action server. The test modules start what they need on
top (the NLU server and a Rasa core reaching it; redis-server and Rasa with two workers).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import pytest

from rasa_gpt3.demo import (
    Server,
    fine_tune_models,
    free_port,
    rasa_run_command,
    rasa_train,
    start_action_server,
    start_server,
    wait_ready,
)
from tests.e2e.conftest import EXAMPLE_BOT, NOT_COPIED

CONFIG = "config_gpt3_only.yml"


def local_env(project: Path, **extra: str) -> Dict[str, str]:
    """The environment of a child process: the embedded local backend on the project's state, no telemetry."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "RASA_GPT3_", "SANIC_"))}
    env.update(
        {
            "RASA_GPT3_LOCAL": "1",
            "RASA_GPT3_PROJECT": str(project),
            "RASA_TELEMETRY_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    env.update(extra)
    return env


@dataclass
class LocalBot:
    """example_bot's copy with its models fine-tuned on the local backend and the GPT-only Rasa model."""

    project: Path
    archive: Path
    actions_url: str

    def start(
        self, name: str, command, port: int, env: Optional[Dict[str, str]] = None, ready: str = "/status"
    ) -> Server:
        """Starts `command` in the project (output in NAME.log) and waits until GET `ready` answers 200."""
        server = start_server(
            name,
            command,
            self.project,
            self.project / f"{name}.log",
            f"http://127.0.0.1:{port}",
            env or local_env(self.project),
        )
        try:
            wait_ready(server, ready)
        except Exception:
            server.stop()
            raise
        return server

    def rasa_run(self, name: str, endpoints: str, env: Optional[Dict[str, str]] = None) -> Server:
        """`rasa run --enable-api` on the GPT-only model with `endpoints` (a file name in the project)."""
        port = free_port()
        return self.start(name, rasa_run_command(port, self.archive, endpoints), port, env)

    def write(self, name: str, text: str) -> str:
        """Writes a file into the project; returns its name."""
        (self.project / name).write_text(text, encoding="utf-8")
        return name


@pytest.fixture(scope="session")
def local_bot(tmp_path_factory):
    """The bot, trained, with an action server running (stopped at the end of the session)."""
    from rasa_gpt3.local.embedded import stop_server
    from rasa_gpt3.settings import Settings

    project = tmp_path_factory.mktemp("concurrency") / "example_bot"
    shutil.copytree(EXAMPLE_BOT, project, ignore=NOT_COPIED)
    env = local_env(project)
    fine_tune_models(project, lambda line: None)
    # this process's backend trained the models; from here on each child process serves them itself
    stop_server(Settings(project_dir=project).local_state_dir)
    archive = rasa_train(project, project / CONFIG, project / "models", project / "train.log", env)
    actions = start_action_server(project, project / "actions.log", env)
    try:
        wait_ready(actions, "/health")
        yield LocalBot(project, archive, f"{actions.url}/webhook")
    finally:
        actions.stop()


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Polls `condition()` until it is true; fails the test with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_port():
    """A redis-server on a free 127.0.0.1 port, nothing saved to disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for(answers, "redis-server to answer", timeout=30)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=10)
