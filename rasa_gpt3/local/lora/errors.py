"""The one error type of the LoRA engine: a code a fine-tuning job can carry and a one-line message."""

from __future__ import annotations

from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.local.lora import INSTALL_HINT, REQUIRED_MODULES, is_installed

# codes, as a failed job's error.code or an API error's code
BASE_MODEL_NOT_FOUND = "base_model_not_found"
NO_CHAT_TEMPLATE = "tokenizer_without_chat_template"
CHAT_TEMPLATE_FAILED = "chat_template_error"
OUT_OF_MEMORY = "out_of_memory"
MISSING_DEPENDENCY = "missing_dependency"
INVALID_SETTINGS = "invalid_lora_settings"
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
INVALID_ADAPTER = "invalid_adapter"


class LoraError(RasaGPT3Error):
    """Something a user can fix about a LoRA job or request; `code` names it for the API, the message says how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def require_installed() -> None:
    """Raises LoraError(MISSING_DEPENDENCY) when the `lora` extra is not installed."""
    if not is_installed():
        raise LoraError(
            MISSING_DEPENDENCY, f"fine-tuning open-weights models needs {', '.join(REQUIRED_MODULES)}: {INSTALL_HINT}"
        )
