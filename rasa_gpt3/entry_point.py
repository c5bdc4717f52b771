"""What every command-line entry point shares: a user's error or Ctrl-C is one line on stderr, never a traceback."""

from __future__ import annotations

import sys
from typing import Callable

from rasa_gpt3.errors import RasaGPT3Error

INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def exit_code_of(command: Callable[[], int], *, interrupted: str = "interrupted") -> int:
    """Runs `command` and returns its exit code; a RasaGPT3Error or Ctrl-C prints one line on stderr instead.

    `interrupted` is the line printed on Ctrl-C (a command that cleans up can say what it cleaned up).
    """
    try:
        return int(command() or 0)
    except RasaGPT3Error as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
