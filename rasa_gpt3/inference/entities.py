"""What an entities model's answer means for Rasa: the entity values it names, located in the message text.

`locate_entities` finds each value in the text (exact, then case-insensitive, whole words first, each occurrence
used once) and drops what the text or the training data does not have. `extract_entities` /
`extract_entities_async` build the request, make one bounded call and read the answer; they never raise.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.errors import CallFailed
from rasa_gpt3.inference.calls import DEFAULT_MAX_MESSAGE_CHARS, BoundedCaller, log_failure, message_request
from rasa_gpt3.inference.transport import Completion
from rasa_gpt3.outcomes import Outcome

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntityModel:
    """A fine-tuned entities model and the entity types, roles and groups the bot's data knows."""

    model: str
    fmt: str
    entity_types: FrozenSet[str]
    roles: FrozenSet[str] = frozenset()
    groups: FrozenSet[str] = frozenset()
    max_tokens: int = 200
    # longer messages are never sent: no entities, outcome too_long (None: no limit)
    max_message_chars: Optional[int] = DEFAULT_MAX_MESSAGE_CHARS

    @classmethod
    def from_task_model(cls, task_model: Any, **options: Any) -> EntityModel:
        """The entities model of a `rasa_gpt3.nlu.task_model.TaskModel`; `options` set the other fields."""
        return cls(
            model=task_model.model,
            fmt=task_model.fmt,
            entity_types=frozenset(task_model.entity_types),
            roles=frozenset(task_model.roles),
            groups=frozenset(task_model.groups),
            **options,
        )

    def request_body(self, text: str) -> Dict[str, Any]:
        """The request body for `text`: the prompt from `prompts`, temperature 0, the answer's token logprobs."""
        body = dict(prompts.entities_request(text, self.fmt))
        body["temperature"] = 0
        body["max_tokens"] = self.max_tokens
        if self.fmt == "chat":
            body["logprobs"] = True
        else:
            body["logprobs"] = 1
            body["stop"] = prompts.stop_sequences(self.fmt)
        return body


@dataclass(frozen=True)
class EntityExtraction:
    """Entities found in one message, and how it went."""

    entities: List[Dict[str, Any]]
    outcome: Outcome = Outcome.OK
    # how many entities the model named that were dropped (unknown type, or not found in the text)
    dropped: int = 0
    model: Optional[str] = None
    cached: bool = False
    error: Optional[str] = None


def answer_confidence(completion: Completion) -> float:
    """The probability of the whole generated answer (product of its token probabilities); 1.0 without logprobs."""
    if not completion.token_logprobs:
        return 1.0
    return math.exp(sum(completion.token_logprobs))


def _is_word_edge(text: str, start: int, end: int) -> bool:
    left = start == 0 or not text[start - 1].isalnum() or not text[start].isalnum()
    right = end == len(text) or not text[end].isalnum() or not text[end - 1].isalnum()
    return left and right


def _find_span(text: str, value: str, taken: Sequence[Tuple[int, int]]) -> Optional[Tuple[int, int]]:
    words = value.split()
    if not words:
        return None
    # the model saw whitespace-normalised text, so any run of whitespace in the message matches one space
    pattern = r"\s+".join(re.escape(word) for word in words)
    for flags in (0, re.IGNORECASE):
        spans = [(m.start(), m.end()) for m in re.finditer(pattern, text, flags)]
        free = [s for s in spans if not any(s[0] < end and start < s[1] for start, end in taken)]
        # whole words first: "art" should not be found inside "start" when it also stands alone
        for span in sorted(free, key=lambda s: (not _is_word_edge(text, *s), s[0])):
            return span
    return None


def locate_entities(
    text: str,
    answers: Iterable[Mapping[str, Optional[str]]],
    entity_types: Optional[Iterable[str]] = None,
    roles: Optional[Iterable[str]] = None,
    groups: Optional[Iterable[str]] = None,
    confidence: float = 1.0,
) -> Tuple[List[Dict[str, Any]], int]:
    """Places the model's entity answers in `text`; returns (Rasa entity dicts sorted by start, number dropped).

    Each value is searched exactly, then case-insensitively, whole words first, skipping text already taken by an
    earlier answer (so a value named twice takes two occurrences). `value` is the text span itself, so
    EntitySynonymMapper maps it as it does DIET's. Unknown entity types and values not in the text are dropped;
    a role or group the data does not know is left off.
    """
    known_types = None if entity_types is None else set(entity_types)
    known_roles = None if roles is None else set(roles)
    known_groups = None if groups is None else set(groups)
    taken: List[Tuple[int, int]] = []
    located: List[Dict[str, Any]] = []
    dropped = 0
    for answer in answers:
        entity_type = answer.get("entity")
        value = answer.get("value")
        if not entity_type or value is None or (known_types is not None and entity_type not in known_types):
            dropped += 1
            continue
        span = _find_span(text, str(value), taken)
        if span is None:
            dropped += 1
            continue
        taken.append(span)
        start, end = span
        entity: Dict[str, Any] = {"entity": entity_type, "start": start, "end": end, "value": text[start:end]}
        role, group = answer.get("role"), answer.get("group")
        if role is not None and (known_roles is None or role in known_roles):
            entity["role"] = role
        if group is not None and (known_groups is None or group in known_groups):
            entity["group"] = group
        entity["confidence_entity"] = confidence
        located.append(entity)
    located.sort(key=lambda entity: (entity["start"], entity["end"]))
    return located, dropped


def read_entities(text: str, completion: Completion, entity_model: EntityModel) -> EntityExtraction:
    """Turns an entities completion into located entities; invalid JSON gives none and outcome `invalid_json`."""
    try:
        answers = prompts.parse_entities(completion.text)
    except ValueError as error:
        return EntityExtraction(
            [], Outcome.INVALID_JSON, model=entity_model.model, cached=completion.cached, error=str(error)
        )
    entities, dropped = locate_entities(
        text,
        answers,
        entity_model.entity_types,
        entity_model.roles,
        entity_model.groups,
        confidence=answer_confidence(completion),
    )
    return EntityExtraction(entities, Outcome.OK, dropped, entity_model.model, completion.cached)


def extract_entities(text: str, entity_model: EntityModel, caller: BoundedCaller) -> EntityExtraction:
    """Extracts entities from `text` with the fine-tuned model within the caller's budget; never raises."""
    try:
        completion = caller.complete(entity_model.model, message_request(entity_model, text))
    except CallFailed as failure:
        return _failed(entity_model, failure)
    return _warn_if_invalid(read_entities(text, completion, entity_model))


async def extract_entities_async(text: str, entity_model: EntityModel, caller: BoundedCaller) -> EntityExtraction:
    """`extract_entities` for event loops."""
    try:
        completion = await caller.complete_async(entity_model.model, message_request(entity_model, text))
    except CallFailed as failure:
        return _failed(entity_model, failure)
    return _warn_if_invalid(read_entities(text, completion, entity_model))


def _warn_if_invalid(extraction: EntityExtraction) -> EntityExtraction:
    if extraction.outcome is Outcome.INVALID_JSON:
        logger.warning(
            "rasa_gpt3 entities model %s gave an answer that is not an entity list: %s",
            extraction.model,
            extraction.error,
        )
    return extraction


def _failed(entity_model: EntityModel, failure: CallFailed) -> EntityExtraction:
    log_failure("entities", entity_model.model, failure)
    return EntityExtraction([], failure.kind, model=entity_model.model, error=failure.reason)
