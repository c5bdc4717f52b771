"""The intent vocabulary rasa_gpt3 shares with Rasa: retrieval intents, the fallback intent and the `/` shortcut.

Taken from Rasa's own constants, so the components, the fallback action and evaluation name intents as Rasa does.
"""

from __future__ import annotations

from typing import Optional

from rasa.shared.constants import DEFAULT_NLU_FALLBACK_INTENT_NAME, INTENT_MESSAGE_PREFIX
from rasa.shared.nlu.constants import RESPONSE_IDENTIFIER_DELIMITER

# what FallbackClassifier predicts, and what the components predict when the model could not decide
FALLBACK_INTENT = DEFAULT_NLU_FALLBACK_INTENT_NAME
# `faq/ask_hours` is the full (retrieval) intent of the base intent `faq`
RETRIEVAL_DELIMITER = RESPONSE_IDENTIFIER_DELIMITER
# a message starting with it names its intent (`/greet`); Rasa's RegexMessageHandler reads it, the model is not asked
SHORTCUT_PREFIX = INTENT_MESSAGE_PREFIX


def base_intent(intent: str) -> str:
    """The base intent of a retrieval intent (`faq/ask_x` → `faq`); other intents unchanged."""
    return intent.split(RETRIEVAL_DELIMITER, 1)[0]


def is_retrieval_intent(intent: Optional[str]) -> bool:
    """True for a full retrieval intent such as `faq/ask_x`."""
    return bool(intent) and RETRIEVAL_DELIMITER in str(intent)


def is_shortcut(text: str) -> bool:
    """True for a message that names its intent itself (`/greet`)."""
    return text.startswith(SHORTCUT_PREFIX)
