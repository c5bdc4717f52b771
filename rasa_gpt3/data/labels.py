"""The label codec: each intent gets a short label that is one token of the base model's tokenizer.

The intent classifier asks for one token (max_tokens=1) and reads the class probabilities from that token's
logprobs, so every label must be exactly one token in the form the model emits it (`prompts.label_token`:
"label" for chat, " label" for completion) and all labels must differ.

Choice per intent, deterministic (intents are handled in sorted order):
1. the intent name itself, when it is one token;
2. a readable shortening: the retrieval key (`ask_x` of `faq/ask_x`), the parts of the name split at
   `/ _ - .` and camelCase (last part first; as written, lowercased, capitalised), the parts joined, then
   prefixes of the name of 3+ characters (longest first);
3. else a short code: a number (`0`..`999`, one token in chat form) or, when numbers are not single tokens
   (completion form: " 12" is two tokens), one or two lowercase letters.
Names that are single tokens are reserved first, so a shortening never takes another intent's own name.
"""
from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional

from rasa_gpt3.prompts import STOP, label_token

CODEC_VERSION = 1
_RESERVED = {STOP.strip()}


def _is_single_token(text: str, encoding: Any) -> bool:
    return len(encoding.encode_ordinary(text)) == 1


def _usable(label: str) -> bool:
    return bool(label) and not any(ch.isspace() for ch in label) and label not in _RESERVED


def _name_parts(intent: str) -> List[str]:
    parts: List[str] = []
    for piece in re.split(r"[/_\-.\s]+", intent):
        parts.extend(p for p in re.split(r"(?<=[a-z0-9])(?=[A-Z])", piece) if p)
    return parts


def _shortenings(intent: str) -> Iterator[str]:
    if "/" in intent:
        yield intent.split("/", 1)[1]
    parts = _name_parts(intent)
    yield from reversed(parts)
    yield from (p.lower() for p in reversed(parts))
    yield from (p.capitalize() for p in reversed(parts))
    yield "".join(parts)
    for end in range(len(intent) - 1, 2, -1):
        yield intent[:end]


def _codes() -> Iterator[str]:
    yield from (str(n) for n in range(1000))
    letters = string.ascii_lowercase
    yield from letters
    yield from ("".join(pair) for pair in itertools.product(letters, repeat=2))


@dataclass
class LabelCodec:
    """Maps intents to single-token labels and back; `labels` is intent → label."""

    labels: Dict[str, str]
    fmt: str
    encoding: str
    _by_label: Dict[str, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_label = {label: intent for intent, label in self.labels.items()}
        if len(self._by_label) != len(self.labels):
            raise ValueError("label codec maps two intents to the same label")

    @classmethod
    def build(cls, intents: Iterable[str], encoding: Any, fmt: str) -> "LabelCodec":
        """Builds the codec for `intents` under the tiktoken `encoding` and record format `fmt`."""
        ordered = sorted(set(intents))
        single = lambda label: _usable(label) and _is_single_token(label_token(label, fmt), encoding)  # noqa: E731
        labels: Dict[str, str] = {intent: intent for intent in ordered if single(intent)}
        used = set(labels.values())
        codes = None
        for intent in ordered:
            if intent in labels:
                continue
            choice = next((c for c in _shortenings(intent) if c not in used and single(c)), None)
            if choice is None:
                codes = codes or _codes()
                choice = next((c for c in codes if c not in used and single(c)), None)
                if choice is None:
                    raise ValueError("more intents than single-token codes available")
            labels[intent] = choice
            used.add(choice)
        return cls(labels=dict(sorted(labels.items())), fmt=fmt, encoding=getattr(encoding, "name", str(encoding)))

    def label_of(self, intent: str) -> str:
        """The label of `intent`; raises KeyError for an intent the codec does not know."""
        return self.labels[intent]

    def intent_of(self, label: str) -> Optional[str]:
        """The intent of a label, also as emitted by the model (leading space, stop sequence); None if unknown."""
        found = self._by_label.get(label)
        if found is None and label is not None:
            found = self._by_label.get(label.replace(STOP, "").strip())
        return found

    def token_of(self, intent: str) -> str:
        """The exact first token the model emits for `intent` (what the classifier looks up in the logprobs)."""
        return label_token(self.labels[intent], self.fmt)

    def to_json(self) -> Dict[str, Any]:
        """The codec as a JSON-ready dict (what labels.json holds)."""
        return {"version": CODEC_VERSION, "format": self.fmt, "encoding": self.encoding, "labels": dict(self.labels)}

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "LabelCodec":
        """Reads a codec back from `to_json()` output; raises ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
            raise ValueError("not a label codec (expected an object with 'labels')")
        return cls(labels=dict(data["labels"]), fmt=data.get("format", "chat"), encoding=data.get("encoding", ""))
