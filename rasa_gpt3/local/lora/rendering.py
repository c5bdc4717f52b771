"""How records and requests become token ids for an open-weights model, and which labels are one of its tokens.

Chat records are rendered with the tokenizer's own chat template: the prompt is every message but the last with
the template's generation prompt (the assistant prefix); the answer is what the template writes after that prefix
for the last assistant message, up to and including the first end-of-turn token. Completion records are the
prompt (with the tokenizer's own special tokens, e.g. a BOS) then the completion and an end-of-sequence token.
Prompt and answer are tokenized separately, exactly as the server later tokenizes a request and the model then
generates, and only the answer's tokens carry a training label (loss on the assistant turn only). Earlier
assistant turns of a conversation are context, not trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.local.lora.errors import CHAT_TEMPLATE_FAILED, NO_CHAT_TEMPLATE, LoraError

IGNORE_INDEX = -100  # the label torch's cross-entropy skips: prompt and padding positions
_PROBE_USER = "x"


@dataclass(frozen=True)
class EncodedExample:
    """One training example as token ids: the model reads `input_ids`; `labels` is IGNORE_INDEX on the prompt."""

    input_ids: List[int]
    labels: List[int]

    @property
    def answer_tokens(self) -> int:
        """How many tokens carry a label (the tokens the loss and the token accuracy are over)."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def as_features(self) -> Dict[str, List[int]]:
        """The dict a data collator takes."""
        return {
            "input_ids": list(self.input_ids),
            "labels": list(self.labels),
            "attention_mask": [1] * len(self.input_ids),
        }


def chat_messages(messages: Iterable[Dict[str, Any]]) -> List[Dict[str, str]]:
    """Messages as chat templates expect them: string content, OpenAI's `developer` role as `system`."""
    return [
        {
            "role": "system" if message.get("role") == "developer" else str(message.get("role")),
            "content": "" if message.get("content") is None else str(message.get("content")),
        }
        for message in messages
    ]


def _render(tokenizer: Any, messages: List[Dict[str, str]], add_generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise LoraError(
            NO_CHAT_TEMPLATE,
            f"the tokenizer of {tokenizer.name_or_path} has no chat template: "
            "chat messages need one (use completion records or an instruct model)",
        )
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as error:  # jinja2 TemplateError: e.g. a template that refuses a system message
        raise LoraError(
            CHAT_TEMPLATE_FAILED,
            f"the chat template of {tokenizer.name_or_path} rejects these messages: {str(error).splitlines()[0][:200]}",
        ) from None


def _ids(tokenizer: Any, text: str, special: bool = False) -> List[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def prompt_ids(
    tokenizer: Any, *, messages: Optional[Sequence[Dict[str, Any]]] = None, prompt: Optional[str] = None
) -> List[int]:
    """The token ids the model reads before it answers: chat messages with the generation prompt, or a prompt."""
    if messages is not None:
        return _ids(tokenizer, _render(tokenizer, chat_messages(messages), add_generation_prompt=True))
    return _ids(tokenizer, prompt or "", special=True)


def _special_ids(tokenizer: Any) -> FrozenSet[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return frozenset(tokenizer.all_special_ids) | frozenset(i for i, token in added.items() if token.special)


def _chat_answer_text(tokenizer: Any, messages: List[Dict[str, str]]) -> Tuple[str, str]:
    prompt = _render(tokenizer, messages[:-1], add_generation_prompt=True)
    full = _render(tokenizer, messages, add_generation_prompt=False)
    if full.startswith(prompt):
        return prompt, full[len(prompt) :]
    # templates that rewrite earlier turns once an answer follows: the answer then its end-of-sequence token
    return prompt, messages[-1]["content"] + (tokenizer.eos_token or "")


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> FrozenSet[int]:
    """The token ids that end an answer: end-of-sequence ids of tokenizer and generation config, and the chat
    template's end-of-turn token (the first special token the template writes after an assistant message)."""
    stops = set()
    if tokenizer.eos_token_id is not None:
        stops.add(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        stops.update(int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured]))
    if getattr(tokenizer, "chat_template", None):
        probe = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": "y"}]
        try:
            _, answer = _chat_answer_text(tokenizer, probe)
        except LoraError:
            answer = ""
        special = _special_ids(tokenizer)
        end = next((i for i in _ids(tokenizer, answer) if i in special), None)
        if end is not None:
            stops.add(end)
    return frozenset(stops)


def _answer_ids(tokenizer: Any, answer_text: str, stops: FrozenSet[int]) -> List[int]:
    ids = _ids(tokenizer, answer_text)
    for position, token in enumerate(ids):
        if token in stops:
            return ids[: position + 1]  # what the template writes after the end of turn is not the answer
    return ids + ([int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else [])


def encode_record(tokenizer: Any, record: Dict[str, Any], stops: FrozenSet[int], max_length: int) -> EncodedExample:
    """A fine-tune record (chat or prompt/completion) as input ids and answer-only labels, at most `max_length`
    long: a longer prompt loses its oldest tokens, the answer is kept (and cut only if it alone is too long)."""
    if "messages" in record:
        messages = chat_messages(record["messages"])
        prompt_text, answer_text = _chat_answer_text(tokenizer, messages)
        prompt = _ids(tokenizer, prompt_text)
    else:
        prompt = _ids(tokenizer, record["prompt"], special=True)
        answer_text = record["completion"]
    answer = _answer_ids(tokenizer, answer_text, stops)
    if len(prompt) + len(answer) > max_length:
        keep = max(1, max_length - len(answer))
        prompt = prompt[-keep:]
        answer = answer[: max_length - len(prompt)]
    return EncodedExample(input_ids=prompt + answer, labels=[IGNORE_INDEX] * len(prompt) + answer)


def emitted_label_ids(tokenizer: Any, label_text: str, fmt: str) -> List[int]:
    """The tokens the model emits for `label_text` (as `prompts.label_token` writes it) right after the prompt.

    Chat: the template's assistant prefix is part of the prompt, so this is how the template continues with the
    label as the assistant's content. Completion: the completion starts with the label and goes on with the stop
    sequence. When a token runs past the label's end (the label merges with what follows), the label is not a
    token of its own there: the result then holds that token and one more id (-1) so it never counts as one token.
    """
    prompts.label_token(label_text, fmt)  # raises ValueError for an unknown format
    if fmt == "chat":
        _, answer_text = _chat_answer_text(
            tokenizer, [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": label_text}]
        )
    else:
        answer_text = label_text + prompts.STOP
    ids = _ids(tokenizer, answer_text)
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text == label_text:
            return ids[:end]
        if len(text) >= len(label_text):
            return ids[:end] + [-1]
    return ids + [-1]


def is_single_token_label(tokenizer: Any, label: str, fmt: str) -> bool:
    """Whether intent label `label` is exactly one token of `tokenizer` as the model emits it after the prompt."""
    return one_token_predicate(tokenizer, fmt)(prompts.label_token(label, fmt))


def tokenizer_name(tokenizer: Any) -> str:
    """The name a label codec records for an open-weights model's tokenizer (`hf:` and where it came from)."""
    return f"hf:{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}"


def one_token_predicate(tokenizer: Any, fmt: str) -> Callable[[str], bool]:
    """The `is_one_token` of rasa_gpt3.data.labels.LabelCodec.build for this tokenizer: whether a label's emitted
    text (`prompts.label_token`) is one token of it right after the prompt (see emitted_label_ids).

    LabelCodec.build(intents, tokenizer_name(tokenizer), fmt, is_one_token=one_token_predicate(tokenizer, fmt))
    gives every intent a label the served model writes as one token.
    """
    return lambda text: len(emitted_label_ids(tokenizer, text, fmt)) == 1


class TokenizerEncoding:
    """An open-weights model's tokenizer as rasa_gpt3.data counts and labels with it: tiktoken's `name`,
    `encode_ordinary` and `special_tokens_set`, and `one_token_predicate(fmt)` for the label codec."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.name = tokenizer_name(tokenizer)

    def encode_ordinary(self, text: str) -> List[int]:
        """The token ids of `text`, special-token strings read as ordinary text and no BOS/EOS added."""
        return _ids(self.tokenizer, text)

    @property
    def special_tokens_set(self) -> Set[str]:
        """The tokenizer's special tokens as text."""
        added = getattr(self.tokenizer, "added_tokens_decoder", {}) or {}
        return set(self.tokenizer.all_special_tokens) | {token.content for token in added.values() if token.special}

    def one_token_predicate(self, fmt: str) -> Callable[[str], bool]:
        """Whether a label's emitted text is one token as the model writes it after the prompt (see below)."""
        return one_token_predicate(self.tokenizer, fmt)


@lru_cache(maxsize=8)
def tokenizer_encoding(base_model_name: str) -> TokenizerEncoding:
    """The tokenizer of open-weights base model `base_model_name` (`hf:ORG/NAME` or a directory) for counting."""
    from rasa_gpt3.local.lora.base_model import load_tokenizer, resolve_base_model

    return TokenizerEncoding(load_tokenizer(resolve_base_model(base_model_name), needs_chat_template=False))
