"""Fixtures of the export/validate tests: Rasa projects loaded once per session, and a CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO.parent / "shared" / "corpora"
FINANCIAL_DEMO = CORPORA / "financial-demo"
TRAVEL_BOT = REPO / "tests" / "fixtures" / "travel_bot"


@pytest.fixture(scope="session")
def financial_project():
    """financial-demo loaded through Rasa's importer (its config is only read, never instantiated)."""
    from rasa_gpt3.data.project import load_project

    return load_project(FINANCIAL_DEMO)


@pytest.fixture(scope="session")
def travel_project():
    """The travel_bot fixture: retrieval intents, roles/groups, synonyms, a JSON NLU file, stories and rules."""
    from rasa_gpt3.data.project import load_project

    return load_project(TRAVEL_BOT)


def cli_command(*args: str) -> List[str]:
    """The command line that runs `rasa-gpt3 ARGS` with this interpreter."""
    return [sys.executable, "-m", "rasa_gpt3.cli", *args]


def run_cli_many(commands: Sequence[Sequence[str]], cwd: Path) -> List[subprocess.CompletedProcess]:
    """Runs several `rasa-gpt3` commands at once (each pays Rasa's import time) and returns their results."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    processes = [
        subprocess.Popen(cli_command(*args), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return results
