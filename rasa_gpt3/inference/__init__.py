"""The serving side of the fine-tuned models: bounded API calls and what their answers mean for Rasa.

Used by the NLU components (synchronously: Rasa 3.6 runs `process` inside Sanic's event loop), by the fallback
action (asynchronously) and by evaluation. The calls, in `calls` (with `transport`, `breaker` and `cache`): one
request within a time budget, one quick retry, a circuit breaker and an LRU cache; a failed call raises
`CallFailed`. What the answers mean, in `intents` (a ranking from logprobs) and `entities` (values located in the
text); `classify` and `extract_entities` put the two together and never raise for an API problem.
"""

from rasa_gpt3.errors import CallFailed
from rasa_gpt3.inference.breaker import CircuitBreaker
from rasa_gpt3.inference.cache import ResponseCache, cache_key
from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy, caller_for
from rasa_gpt3.inference.entities import (
    EntityExtraction,
    EntityModel,
    extract_entities,
    extract_entities_async,
    locate_entities,
    read_entities,
)
from rasa_gpt3.inference.intents import IntentModel, IntentPrediction, classify, classify_async, rank_intents
from rasa_gpt3.inference.transport import Completion, parse_completion_body
from rasa_gpt3.outcomes import Outcome

__all__ = [
    "BoundedCaller",
    "CallFailed",
    "CallPolicy",
    "CircuitBreaker",
    "Completion",
    "EntityExtraction",
    "EntityModel",
    "IntentModel",
    "IntentPrediction",
    "Outcome",
    "ResponseCache",
    "cache_key",
    "caller_for",
    "classify",
    "classify_async",
    "extract_entities",
    "extract_entities_async",
    "locate_entities",
    "parse_completion_body",
    "rank_intents",
    "read_entities",
]
