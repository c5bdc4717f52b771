"""Fixtures of the export/validate tests: paths, Rasa projects loaded once per session, a CLI runner.

Everything shared is a fixture (not an importable helper), so the tests work whether or not tests/ is a package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Sequence

import pytest

REPO = Path(__file__).resolve().parents[2]
CORPORA = REPO.parent / "shared" / "corpora"


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    """The shared, read-only corpora next to the repository."""
    return CORPORA


@pytest.fixture(scope="session")
def financial_demo_dir() -> Path:
    """financial-demo, a full Rasa 3.1 bot (its config needs Duckling/spaCy; export only reads its language)."""
    return CORPORA / "financial-demo"


@pytest.fixture(scope="session")
def travel_bot_dir() -> Path:
    """The travel_bot fixture: retrieval intents, roles/groups, synonyms, a JSON NLU file, stories and rules."""
    return REPO / "tests" / "fixtures" / "travel_bot"


@pytest.fixture(scope="session")
def financial_project(financial_demo_dir):
    """financial-demo loaded through Rasa's importer."""
    from rasa_gpt3.data.project import load_project

    return load_project(financial_demo_dir)


@pytest.fixture(scope="session")
def travel_project(travel_bot_dir):
    """The travel_bot fixture loaded through Rasa's importer."""
    from rasa_gpt3.data.project import load_project

    return load_project(travel_bot_dir)


def _run_cli_many(commands: Sequence[Sequence[str]], cwd: Path) -> List[subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "rasa_gpt3.cli", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = []
    for args, process in zip(commands, processes):
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(args, process.returncode, out, err))
    return results


@pytest.fixture
def run_cli_many() -> Callable[[Sequence[Sequence[str]], Path], List[subprocess.CompletedProcess]]:
    """Runs several `rasa-gpt3` commands at once as subprocesses (each pays Rasa's import time)."""
    return _run_cli_many
