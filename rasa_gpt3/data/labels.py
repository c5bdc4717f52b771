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

"One token" is decided by tiktoken's encoding of an OpenAI base model unless the caller passes `is_one_token`,
a predicate on the emitted label text for another model's tokenizer (an open-weights model's, for example).
There are about 1,650 one-token codes in chat form and 630 in completion form; more intents than names and codes
can label is a DataError that says how many fit and what to do.
"""

from __future__ import annotations

import itertools
import re
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

from rasa_gpt3.data.tokens import get_encoding, is_single_token
from rasa_gpt3.errors import DataError
from rasa_gpt3.intent_names import RETRIEVAL_DELIMITER, is_retrieval_intent
from rasa_gpt3.prompts import FORMATS, STOP, label_token

CODEC_VERSION = 1
_RESERVED = {STOP.strip()}

OneToken = Callable[[str], bool]
"""Whether a label's emitted text (`prompts.label_token`: "label" in chat, " label" in completion) is one token."""


def tiktoken_one_token(encoding: Any) -> OneToken:
    """The `OneToken` predicate of a tiktoken encoding (what the OpenAI base models use)."""
    return lambda text: is_single_token(text, encoding)


def one_token_of(encoding: Any, fmt: str) -> OneToken:
    """The `OneToken` predicate of what data.tokens.get_encoding gives: an open-weights tokenizer decides how the
    model emits a label after its prompt in format `fmt`; a tiktoken encoding counts the label's text alone."""
    of_tokenizer = getattr(encoding, "one_token_predicate", None)
    return of_tokenizer(fmt) if of_tokenizer is not None else tiktoken_one_token(encoding)


def _usable(label: str) -> bool:
    return bool(label) and not any(ch.isspace() for ch in label) and label not in _RESERVED


def _name_parts(intent: str) -> List[str]:
    parts: List[str] = []
    for piece in re.split(r"[/_\-.\s]+", intent):
        parts.extend(p for p in re.split(r"(?<=[a-z0-9])(?=[A-Z])", piece) if p)
    return parts


def _shortenings(intent: str) -> Iterator[str]:
    if is_retrieval_intent(intent):
        yield intent.split(RETRIEVAL_DELIMITER, 1)[1]
    parts = _name_parts(intent)
    yield from reversed(parts)
    yield from (p.lower() for p in reversed(parts))
    yield from (p.capitalize() for p in reversed(parts))
    yield "".join(parts)
    for end in range(len(intent) - 1, 2, -1):
        yield intent[:end]


def _one_token_label(is_one_token: OneToken, fmt: str) -> Callable[[str], bool]:
    """Whether a label can be used in format `fmt`: no spaces, not the stop word, one token as emitted."""
    return lambda label: _usable(label) and is_one_token(label_token(label, fmt))


def _code_count(is_one_token: OneToken, fmt: str) -> int:
    single = _one_token_label(is_one_token, fmt)
    return sum(1 for code in _codes() if single(code))


def _too_many_intents(
    count: int, unlabelled: int, labels: Dict[str, str], fmt: str, tokenizer: str, is_one_token: OneToken
) -> str:
    """The error for more intents than one-token labels: how many, the limit of this format and tokenizer, advice."""
    code_set = set(_codes())
    named = sum(1 for label in labels.values() if label not in code_set)
    codes = _code_count(is_one_token, fmt)
    message = (
        f"{count:,} intents are too many for one-token labels in the {fmt} format with {tokenizer}: "
        f"{named:,} have a name (or a part of one) that is one token, and the others share {codes:,} "
        f"one-token codes, so {unlabelled:,} are left without a label (at most {count - unlabelled:,} of "
        f"these intents fit); merge or remove at least {unlabelled:,} intents the bot need not tell apart"
    )
    for other in FORMATS:
        other_codes = _code_count(is_one_token, other) if other != fmt else 0
        if other_codes > codes:
            message += f", or export in the {other} format, which has {other_codes:,} one-token codes"
    return message


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
    def build(
        cls, intents: Iterable[str], encoding: Any, fmt: str, *, is_one_token: Optional[OneToken] = None
    ) -> LabelCodec:
        """Builds the codec for `intents` in record format `fmt`, each label one token as the model emits it.

        `encoding` is the tiktoken encoding (or its name); with `is_one_token` it is only the name of the
        tokenizer that predicate stands for. Raises DataError when there are more intents than one-token labels.
        """
        name = encoding if isinstance(encoding, str) else getattr(encoding, "name", str(encoding))
        if is_one_token is None:
            is_one_token = tiktoken_one_token(get_encoding(encoding) if isinstance(encoding, str) else encoding)
        single = _one_token_label(is_one_token, fmt)
        ordered = sorted(set(intents))
        labels: Dict[str, str] = {intent: intent for intent in ordered if single(intent)}
        used = set(labels.values())
        codes = None
        unlabelled: List[str] = []
        for intent in ordered:
            if intent in labels:
                continue
            choice = next((c for c in _shortenings(intent) if c not in used and single(c)), None)
            if choice is None:
                codes = codes or _codes()
                choice = next((c for c in codes if c not in used and single(c)), None)
            if choice is None:
                unlabelled.append(intent)
                continue
            labels[intent] = choice
            used.add(choice)
        if unlabelled:
            raise DataError(_too_many_intents(len(ordered), len(unlabelled), labels, fmt, name, is_one_token))
        return cls(labels=dict(sorted(labels.items())), fmt=fmt, encoding=name)

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
    def from_json(cls, data: Dict[str, Any]) -> LabelCodec:
        """Reads a codec back from `to_json()` output; raises ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("labels"), dict):
            raise ValueError("not a label codec (expected an object with 'labels')")
        return cls(labels=dict(data["labels"]), fmt=data.get("format", "chat"), encoding=data.get("encoding", ""))
