"""The errors rasa_gpt3 raises for things a user can act on; each message is one line."""


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
