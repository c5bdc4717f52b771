"""The errors rasa_gpt3 raises for things a user can act on; each message is one line."""

from rasa_gpt3.outcomes import Outcome


class RasaGPT3Error(Exception):
    """An error with a one-line message that tells the user what is wrong and what to do."""

    exit_code = 1


class ProjectError(RasaGPT3Error):
    """The bot project cannot be loaded (missing files, malformed YAML, a domain Rasa rejects)."""


class DataError(RasaGPT3Error):
    """Training data or a JSONL file is invalid."""


class BackendError(RasaGPT3Error):
    """The model API failed or refused (unreachable, timeout, rate limit, job failure)."""


class BudgetError(RasaGPT3Error):
    """A fine-tune would cost more than the allowed maximum."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type name when the message is empty."""
    text = str(error)
    return text.splitlines()[0] if text.strip() else type(error).__name__


class CallFailed(BackendError):
    """A serving call that produced no completion: `kind` (an Outcome) says why, `reason` in one line, no user text."""

    def __init__(self, kind: Outcome, reason: str):
        super().__init__(f"{kind}: {reason}")
        self.kind = Outcome(kind)
        self.reason = reason
