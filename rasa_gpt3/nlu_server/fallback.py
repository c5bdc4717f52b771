"""The parse result a message gets when the NLU pipeline could not answer in time: the fallback intent, text kept.

Both sides of the NLU server use it: the server when its pipeline misses the deadline or fails, and Rasa core's
interpreter (rasa_gpt3.nlu_server.interpreter) when the server is slow, unreachable or answers nonsense. The
`gpt3_nlu_server` record says what happened, as `gpt3` does for the intent component; a message with this record
and no `gpt3` record was not seen by the GPT intent model, so action_gpt3_fallback re-classifies it.
"""

from __future__ import annotations

from typing import Any, Dict

DEFAULT_FALLBACK_INTENT = "nlu_fallback"
RECORD_KEY = "gpt3_nlu_server"


def fallback_parse(
    text: str, outcome: str, *, fallback_intent: str = DEFAULT_FALLBACK_INTENT, source: str, budget: float
) -> Dict[str, Any]:
    """A parse result in Rasa's shape: `fallback_intent` at confidence 0, no entities, the original text.

    `outcome` names the failure (timeout, connection, http_503, bad_response, pipeline_error), `source` who gave up
    (server or client), `budget` the seconds that side allowed.
    """
    return {
        "text": text,
        "intent": {"name": fallback_intent, "confidence": 0.0},
        "entities": [],
        "intent_ranking": [],
        RECORD_KEY: {"outcome": outcome, "source": source, "budget": round(float(budget), 3)},
    }
