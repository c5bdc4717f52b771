"""Shared helpers for the NLU component tests: real `rasa train` / `rasa test nlu` runs, an in-process Agent, and
the embedded local backend's test controls (faults, request counts)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import httpx

from tests.conftest import REPO

CONFIGS = REPO / "tests" / "configs"
TINY_BOT = Path(__file__).resolve().parent / "data" / "tiny_bot"
EXAMPLE_BOT = REPO / "example_bot"
RASA = str(Path(sys.executable).with_name("rasa"))
# a key that must never reach a Rasa model archive; RASA_GPT3_LOCAL=1 keeps requests on the local backend
CANARY_KEY = "sk-test-canary-must-not-leak-0123456789"


def rasa_env(state_dir: Path) -> Dict[str, str]:
    """The environment for Rasa runs: local backend state in `state_dir`, no telemetry, a canary key."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "RASA_GPT3_FAULTS")}
    env.update(
        {
            "OPENAI_API_KEY": CANARY_KEY,
            "RASA_GPT3_LOCAL": "1",
            "RASA_GPT3_STATE_DIR": str(state_dir),
            "RASA_TELEMETRY_ENABLED": "false",
            # Rasa's training cache, per test session: no component is restored from an earlier run
            "RASA_CACHE_DIRECTORY": str(Path(state_dir).parent / "rasa-cache"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env


def run_rasa(args: List[str], cwd: Path, env: Dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the `rasa` CLI; returns the finished process (check `returncode` yourself)."""
    return subprocess.run([RASA, *args], cwd=str(cwd), env=env, capture_output=True, text=True, timeout=timeout)


def must(process: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """Raises with the output's tail when a Rasa run failed."""
    if process.returncode != 0:
        tail = "\n".join((process.stdout + process.stderr).splitlines()[-40:])
        raise AssertionError(f"`{' '.join(process.args[1:])}` exited {process.returncode}:\n{tail}")
    return process


@dataclass
class Workspace:
    """A copy of a bot project plus the local backend's state directory, shared by a test session."""

    project: Path
    state_dir: Path
    models: Dict[str, Path] = field(default_factory=dict)

    @property
    def env(self) -> Dict[str, str]:
        """The environment for Rasa runs in this workspace."""
        return rasa_env(self.state_dir)

    def train(
        self, config: Path, *, nlu_only: bool = True, data: Optional[str] = None, name: Optional[str] = None
    ) -> Path:
        """`rasa train [nlu]` with `config` (once per name); returns the model archive."""
        name = (name or config.stem).replace(".", "_")  # Rasa cuts a fixed model name at its first dot
        if name in self.models:
            return self.models[name]
        out = self.project / "models" / name
        args = ["train", "nlu", "--nlu", data or "data"] if nlu_only else ["train", "--data", data or "data"]
        args += ["--config", str(config), "--out", str(out), "--fixed-model-name", name]
        if not nlu_only:
            args += ["--domain", "domain.yml"]
        must(run_rasa(args, self.project, self.env))
        (archive,) = out.glob("*.tar.gz")
        self.models[name] = archive
        return archive

    def test_nlu(self, model: Path, nlu: str, out: str) -> Dict[str, Any]:
        """`rasa test nlu` of `model` on `nlu`; returns Rasa's intent report."""
        target = self.project / out
        process = must(
            run_rasa(
                ["test", "nlu", "--model", str(model), "--nlu", nlu, "--out", str(target), "--no-plot"],
                self.project,
                self.env,
            )
        )
        report = target / "intent_report.json"
        # `rasa test nlu` exits 0 even when it evaluated nothing
        assert report.is_file(), "rasa test nlu wrote no intent report:\n" + process.stdout[-2000:]
        return json.loads(report.read_text(encoding="utf-8"))


def make_workspace(root: Path, source: Path) -> Workspace:
    """Copies the bot project `source` under `root` (read-only corpora become writable copies)."""
    project = root / source.name
    shutil.copytree(source, project, ignore=shutil.ignore_patterns("models", ".rasa", ".rasa_gpt3", "results"))
    for path in [project, *project.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return Workspace(project=project, state_dir=root / "local-state")


def archive_text(model: Path) -> str:
    """Every text file inside a Rasa model archive, concatenated (to look for leaked secrets)."""
    chunks = []
    with tarfile.open(model) as archive:
        for member in archive.getmembers():
            if member.isfile():
                chunks.append(archive.extractfile(member).read().decode("utf-8", "replace"))
    return "\n".join(chunks)


def archive_json(model: Path, file_name: str) -> List[Dict[str, Any]]:
    """The JSON files called `file_name` inside a Rasa model archive."""
    found = []
    with tarfile.open(model) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.endswith("/" + file_name):
                found.append(json.loads(archive.extractfile(member).read()))
    return found


class AgentRunner:
    """A Rasa Agent loaded in this process, driven from synchronous tests through one event loop."""

    def __init__(self, model: Path):
        from rasa.core.agent import load_agent

        self.loop = asyncio.new_event_loop()
        self.agent = self.loop.run_until_complete(load_agent(model_path=str(model)))

    def parse(self, text: str) -> Dict[str, Any]:
        """What `/model/parse` would answer for `text`."""
        return self.loop.run_until_complete(self.agent.parse_message(text))

    def say(self, text: str, sender: str = "tester") -> List[Dict[str, Any]]:
        """Handles `text` as a user turn; returns the bot's messages."""
        return self.loop.run_until_complete(self.agent.handle_text(text, sender_id=sender))

    def slot(self, name: str, sender: str = "tester") -> Any:
        """The current value of a slot in `sender`'s conversation."""
        tracker = self.loop.run_until_complete(self.agent.tracker_store.retrieve(sender))
        return tracker.get_slot(name)

    def close(self) -> None:
        """Closes the event loop."""
        self.loop.close()


class BackendControls:
    """The embedded local backend that this process's components use: faults and request counts."""

    def __init__(self, state_dir: Path):
        from rasa_gpt3.local.embedded import ensure_server

        self.root = ensure_server(state_dir).base_url[: -len("/v1")]

    def set_faults(self, spec: Optional[str]) -> None:
        """Makes every following request misbehave (see rasa_gpt3.local.faults); None clears."""
        httpx.post(self.root + "/_local/faults", json={"faults": spec or ""}, timeout=5).raise_for_status()

    def completions_requests(self) -> int:
        """Chat and legacy completion requests served since start."""
        stats = httpx.get(self.root + "/_local/stats", timeout=5).json()
        return sum(count for route, count in stats.get("by_route", {}).items() if "completions" in route)
