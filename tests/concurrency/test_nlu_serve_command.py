"""`python -m rasa_gpt3.nlu_server` (what `rasa-gpt3 nlu serve` runs) on bad input: one line, exit 1, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _serve(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rasa_gpt3.nlu_server", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "no-such-models"], "--model: no-such-models does not exist"),
        (["--model", ".", "--threads", "0"], "--threads must be at least 1"),
        (["--model", ".", "--timeout", "-1"], "--timeout must be a positive number of seconds"),
        (["--model", "broken.tar.gz"], "cannot load the Rasa model"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    (tmp_path / "broken.tar.gz").write_text("not a model", encoding="utf-8")
    result = _serve(*args, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert message in result.stderr and "Traceback" not in result.stderr
