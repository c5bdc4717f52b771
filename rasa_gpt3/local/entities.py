"""Carrying a retrieved example's entity annotations over to a new message (the local backend's entity answers).

A retrieval model for entity data finds the most similar training message; its entities are then placed on the
new message: the two messages are aligned word by word (difflib), and an entity whose words were replaced keeps its
type and takes the aligned words of the new message ("send 50 dollars to Anna" → "send 20 dollars to Bob" carries
amount=20, person=Bob). Values annotated anywhere in the training data that occur in the message are added too.
Every value is a span copied from the message, so callers can always locate it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from difflib import SequenceMatcher
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3 import prompts

_WORD = re.compile(r"\w+|[^\w\s]")
Entity = Dict[str, Any]


def is_entity_answer(answer: str) -> bool:
    """Whether `answer` is an entity list as prompts.render_entities writes it."""
    try:
        prompts.parse_entities(answer)
    except ValueError:
        return False
    return True


def _words(text: str) -> List[Tuple[str, int, int]]:
    return [(match.group().lower(), match.start(), match.end()) for match in _WORD.finditer(text)]


def _word_span(words: Sequence[Tuple[str, int, int]], start: int, end: int) -> Optional[Tuple[int, int]]:
    inside = [i for i, (_, word_start, word_end) in enumerate(words) if word_end > start and word_start < end]
    return (inside[0], inside[-1] + 1) if inside else None


def carry_entities(example_text: str, example_entities: Sequence[Entity], message: str) -> List[Entity]:
    """The example's entities placed on `message` through a word alignment; entities that do not align are dropped."""
    source, target = _words(example_text), _words(message)
    if not source or not target:
        return []
    matcher = SequenceMatcher(a=[w for w, _, _ in source], b=[w for w, _, _ in target], autojunk=False)
    first_of: Dict[int, int] = {}
    last_of: Dict[int, int] = {}
    for tag, a1, a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and a2 - a1 == b2 - b1):
            for offset in range(a2 - a1):
                first_of[a1 + offset] = last_of[a1 + offset] = b1 + offset
        elif tag == "replace":
            # a replaced phrase of another length maps as a whole (only an entity covering it all can use it)
            first_of[a1], last_of[a2 - 1] = b1, b2 - 1
    carried = []
    lowered = example_text.lower()
    for entity in example_entities:
        value = str(entity.get("value") or "")
        position = lowered.find(value.lower()) if value else -1
        if position < 0:
            continue
        span = _word_span(source, position, position + len(value))
        if span is None or span[0] not in first_of or span[1] - 1 not in last_of:
            continue
        start, end = first_of[span[0]], last_of[span[1] - 1]
        if end < start:
            continue
        carried.append({**entity, "value": message[target[start][1] : target[end][2]], "_start": target[start][1]})
    return carried


def build_gazetteer(answers: Sequence[str]) -> List[Entity]:
    """Every annotated value of the training answers with its most frequent entity (role, group); longest first."""
    seen: Dict[str, Counter] = defaultdict(Counter)
    for answer in answers:
        try:
            entities = prompts.parse_entities(answer)
        except ValueError:
            continue
        for entity in entities:
            value = (entity.get("value") or "").strip()
            if len(value) >= 2:
                seen[value.lower()][(entity["entity"], entity.get("role"), entity.get("group"))] += 1
    gazetteer = []
    for value, kinds in seen.items():
        (name, role, group), _ = kinds.most_common(1)[0]
        gazetteer.append({"entity": name, "value": value, "role": role, "group": group})
    gazetteer.sort(key=lambda item: -len(item["value"]))
    return gazetteer


def add_known_values(found: List[Entity], gazetteer: Sequence[Entity], message: str) -> List[Entity]:
    """`found` plus gazetteer values occurring in `message` (whole words, not overlapping), in message order."""
    taken = []
    for entity in found:
        start = entity.get("_start")
        if start is None:
            start = message.find(entity["value"])
        taken.append((start, start + len(entity["value"])))
    result = list(found)
    lowered = message.lower()
    for item in gazetteer:
        for match in re.finditer(r"(?<!\w)" + re.escape(item["value"]) + r"(?!\w)", lowered):
            span = (match.start(), match.end())
            if any(span[0] < end and start < span[1] for start, end in taken):
                continue
            taken.append(span)
            result.append({**item, "value": message[span[0] : span[1]], "_start": span[0]})
    result.sort(key=lambda entity: entity.get("_start") or 0)
    return [{key: value for key, value in entity.items() if key != "_start"} for entity in result]
