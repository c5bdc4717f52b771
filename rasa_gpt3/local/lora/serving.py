"""Serving open-weights models with LoRA adapters: each base model loaded once, adapters swapped on it per request.

`AdapterHost.generate` writes an answer token by token from the model's real next-token distribution: greedy at
temperature 0 (or None), else sampled with a generator seeded by the request's seed (same seed, same answer).
Every generated token comes with its log-probability and the top alternatives (up to MAX_TOP_LOGPROBS) of the
full distribution, as tokenizer pieces: the text each token adds after the tokens before it, special tokens
included. Generation ends at an end-of-turn/end-of-sequence token (finish_reason "stop", the token itself not
shown), at a stop sequence (cut there, as OpenAI does: "stop") or after max_tokens ("length").

One lock per host serialises requests: the active adapter is state of the shared model, and on CPU one forward
pass already uses every core (benchmarks/lora_training.py measures concurrent requests against sequential ones).
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rasa_gpt3.local.engines import Generation
from rasa_gpt3.local.lora.adapter_files import AdapterWeights, read_adapter
from rasa_gpt3.local.lora.base_model import BaseModelSource, context_length, load_causal_lm, load_tokenizer, pick_device
from rasa_gpt3.local.lora.errors import CONTEXT_LENGTH_EXCEEDED, INVALID_ADAPTER, LoraError, require_installed
from rasa_gpt3.local.lora.rendering import prompt_ids, stop_token_ids

MAX_TOP_LOGPROBS = 20
# tokens decoded before a piece so that its text is what it adds in context (SentencePiece drops a leading space
# of a sequence's first token; byte-level pieces may complete a character begun before)
CONTEXT_TOKENS = 3
# what a byte-level tokenizer decodes an incomplete UTF-8 sequence to (U+FFFD)
INCOMPLETE_CHARACTER = "\ufffd"
DEFAULT_MAX_ADAPTERS = 8


@dataclass
class LoraGeneration(Generation):
    """A generation (finish_reason `stop` or `length`) with the token counts of prompt and answer."""

    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated token ids, an ending end-of-turn token included


# an adapter to serve: a directory in PEFT format, or weights in memory (what the local backend's store keeps)
Adapter = Union[str, Path, AdapterWeights]


def _key(adapter: Adapter) -> str:
    """The peft adapter name of `adapter` (peft names are module names: no dots or slashes)."""
    if isinstance(adapter, AdapterWeights):
        return adapter.key
    return "d" + hashlib.sha1(str(Path(adapter).resolve()).encode("utf-8")).hexdigest()[:16]


class AdapterHost:
    """One base model on one device, the adapters loaded on it (least recently used unloaded first), one lock."""

    def __init__(
        self, base: BaseModelSource, device: Optional[str] = None, max_adapters: int = DEFAULT_MAX_ADAPTERS
    ) -> None:
        require_installed()
        self.base = base
        self.device = device or pick_device()
        self.tokenizer = load_tokenizer(base, needs_chat_template=False)
        self.model = load_causal_lm(base, self.device)
        self.context_length = context_length(self.model.config, self.tokenizer)
        self.stops = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.max_adapters = max(1, max_adapters)
        self._peft: Any = None  # the PeftModel wrapping self.model once an adapter is loaded
        self._adapters: OrderedDict[str, bool] = OrderedDict()  # loaded adapter keys, least recently used first
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ adapters

    @property
    def loaded_adapters(self) -> List[str]:
        """Keys of the adapters loaded now, least recently used first."""
        with self._lock:
            return list(self._adapters)

    def _activate(self, adapter: Optional[Adapter]) -> None:
        """Loads (if needed) and activates `adapter`; None means the bare base model. Caller holds the lock."""
        if adapter is None:
            return
        key = _key(adapter)
        if key not in self._adapters:
            weights = adapter if isinstance(adapter, AdapterWeights) else read_adapter(adapter)
            self._load(key, weights)
            self._adapters[key] = True
        self._adapters.move_to_end(key)
        self._peft.set_adapter(key, inference_mode=True)
        while len(self._adapters) > self.max_adapters:
            oldest, _ = self._adapters.popitem(last=False)
            self._peft.delete_adapter(oldest)

    def _load(self, key: str, weights: AdapterWeights) -> None:
        """Adds an adapter's LoRA layers to the model and puts its weights in (no file needed)."""
        import torch
        from peft import PeftConfig, PeftModel, set_peft_model_state_dict

        try:
            config = PeftConfig.from_peft_type(**weights.config)
            config.inference_mode = True
            if self._peft is None:
                self._peft = PeftModel(self.model, config, adapter_name=key)
            else:
                self._peft.add_adapter(key, config)
            loaded = set_peft_model_state_dict(
                self._peft, {name: torch.from_numpy(value) for name, value in weights.tensors.items()}, adapter_name=key
            )
        except (TypeError, ValueError, KeyError, RuntimeError) as error:
            raise LoraError(
                INVALID_ADAPTER,
                f"the adapter does not fit base model {self.base.name}: {str(error).splitlines()[0][:200]}",
            ) from None
        unfilled = [name for name in loaded.missing_keys if f".{key}." in name or name.endswith(f".{key}")]
        if unfilled or loaded.unexpected_keys:
            self._drop(key)
            raise LoraError(
                INVALID_ADAPTER,
                f"the adapter does not fit base model {self.base.name}: "
                f"{len(unfilled)} LoRA weights missing, "
                f"{len(loaded.unexpected_keys)} unknown",
            )
        self._peft.eval()

    def unload_adapter(self, adapter: Adapter) -> bool:
        """Frees an adapter's weights (e.g. its model was deleted); False when it was not loaded."""
        key = _key(adapter)
        with self._lock:
            if key not in self._adapters:
                return False
            self._drop(key)
            return True

    def _drop(self, key: str) -> None:
        """Takes adapter `key`'s layers out of the model. Caller holds the lock."""
        self._adapters.pop(key, None)
        if self._adapters:
            self._peft.set_adapter(next(reversed(self._adapters)), inference_mode=True)
            self._peft.delete_adapter(key)
        else:  # the last one: unwrap the model again, the base weights stay loaded
            self.model = self._peft.unload()
            self._peft = None

    # ------------------------------------------------------------------ tokens

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in this model's tokenizer (no special tokens added)."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_tokens(
        self, *, messages: Optional[Sequence[Dict[str, Any]]] = None, prompt: Optional[str] = None
    ) -> int:
        """Tokens the model reads for a chat request (template included) or a completion prompt."""
        return len(prompt_ids(self.tokenizer, messages=messages, prompt=prompt))

    def _pieces(self, context: List[int], candidates: List[int]) -> List[str]:
        """The text each candidate token adds after `context`."""
        before = self.tokenizer.decode(context, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        afters = self.tokenizer.batch_decode(
            [context + [token] for token in candidates], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        return [
            after[len(before) :]
            if after.startswith(before)
            else self.tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            for token, after in zip(candidates, afters)
        ]

    def answer_text(self, anchor: List[int], generated: List[int]) -> Optional[str]:
        """The text `generated` reads as after the prompt's last tokens `anchor`, without a trailing incomplete
        UTF-8 sequence (it stays back until its last byte comes, as vLLM's detokenizer does); None when decoding
        after the anchor does not extend the anchor's own text."""
        before = self.tokenizer.decode(anchor, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        after = self.tokenizer.decode(anchor + generated, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not after.startswith(before):
            return None
        return after[len(before) :].rstrip(INCOMPLETE_CHARACTER)

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        adapter: Optional[Adapter],
        *,
        messages: Optional[Sequence[Dict[str, Any]]] = None,
        prompt: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Optional[Sequence[str]] = None,
        top_logprobs: int = 0,
    ) -> LoraGeneration:
        """The answer of the model with `adapter` (None: the base model) to chat `messages` or a completion
        `prompt`, at most `max_tokens` long (None: up to the context length). Raises LoraError (context, adapter)."""
        import torch

        if (messages is None) == (prompt is None):
            raise ValueError("give either messages or prompt")
        top_n = max(1, min(int(top_logprobs or 0), MAX_TOP_LOGPROBS))
        stops = [s for s in (stop or []) if s]
        sampling = temperature is not None and temperature > 0
        ids = prompt_ids(self.tokenizer, messages=messages, prompt=prompt)
        if max_tokens is None:
            max_tokens = max(1, self.context_length - len(ids))
        if len(ids) + max_tokens > self.context_length:
            raise LoraError(
                CONTEXT_LENGTH_EXCEEDED,
                (
                    f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                    f"{len(ids) + max_tokens} tokens ({len(ids)} in the messages, {max_tokens} in the completion). "
                    "Please reduce the length of the messages or completion."
                ),
            )
        generator = None
        if sampling:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed if seed is not None else random.getrandbits(63))
        pieces: List[str] = []
        logprobs: List[float] = []
        tops: List[List[Tuple[str, float]]] = []
        generated: List[int] = []
        text = ""
        finish_reason = "length"
        with self._lock:
            self._activate(adapter)  # outside inference mode: adapter weights must stay ordinary tensors
            model = self._peft if self._peft is not None else self.model
            if adapter is None and self._peft is not None:
                scope = self._peft.disable_adapter()
            else:
                scope = _NoScope()
            with scope, torch.inference_mode():
                inputs = torch.tensor([ids], device=self.device)
                past = None
                for _ in range(max_tokens):
                    output = model(input_ids=inputs, past_key_values=past, use_cache=True)
                    past = output.past_key_values
                    logits = output.logits[0, -1].float()
                    distribution = torch.log_softmax(logits, dim=-1)
                    token = _choose(logits, temperature if sampling else None, top_p, generator)
                    generated.append(token)
                    if token in self.stops:
                        finish_reason = "stop"
                        break
                    context = (ids + generated[:-1])[-CONTEXT_TOKENS:]
                    best = torch.topk(distribution, min(top_n, distribution.shape[-1]))
                    candidates = [token] + [int(i) for i in best.indices]
                    texts = self._pieces(context, candidates)
                    answer = self.answer_text(ids[-CONTEXT_TOKENS:], generated)
                    piece = answer[len(text) :] if answer is not None and answer.startswith(text) else texts[0]
                    top = [(texts[1 + n], float(value)) for n, value in enumerate(best.values)]
                    pieces.append(piece)
                    logprobs.append(float(distribution[token]))
                    tops.append(top)
                    cut = _stop_position(text, piece, stops)
                    text += piece
                    if cut is not None:
                        _keep_text(pieces, logprobs, tops, cut)
                        finish_reason = "stop"
                        break
                    inputs = torch.tensor([[token]], device=self.device)
        return LoraGeneration(
            tokens=pieces,
            logprobs=logprobs,
            top=tops,
            finish_reason=finish_reason,
            prompt_tokens=len(ids),
            completion_tokens=len(generated),
        )


class _NoScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _choose(logits: Any, temperature: Optional[float], top_p: Optional[float], generator: Any) -> int:
    """The next token: the most likely one, or one sampled at `temperature` within the top_p nucleus."""
    import torch

    if temperature is None:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits / temperature, dim=-1)
    if top_p is not None and 0 < top_p < 1:
        ordered, order = torch.sort(probabilities, descending=True)
        outside = torch.cumsum(ordered, dim=-1) - ordered >= top_p  # keep the fewest tokens reaching top_p
        ordered[outside] = 0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities, 1, generator=generator))


def _stop_position(text: str, piece: str, stops: Sequence[str]) -> Optional[int]:
    """Where the first stop sequence that ends inside `piece` begins in text + piece, else None."""
    joined = text + piece
    found = [
        position
        for position in (joined.find(stop, max(0, len(text) - len(stop) + 1)) for stop in stops)
        if position >= 0
    ]
    return min(found) if found else None


def _keep_text(pieces: List[str], logprobs: List[float], tops: List[List[Tuple[str, float]]], length: int) -> None:
    """Cuts the generated pieces (and their logprobs) to the first `length` characters of their text, in place."""
    used = 0
    for index, piece in enumerate(pieces):
        if used + len(piece) >= length:
            keep = length - used
            end = index + 1 if keep else index
            del pieces[end:], logprobs[end:], tops[end:]
            if keep:
                pieces[index] = piece[:keep]
            return
        used += len(piece)


_HOSTS: Dict[Tuple[str, str], AdapterHost] = {}
_HOSTS_LOCK = threading.Lock()


def host_for(base: BaseModelSource, device: Optional[str] = None) -> AdapterHost:
    """The process's AdapterHost of `base` on `device`, loading the base model on first use only."""
    key = (str(base.path), device or pick_device())
    with _HOSTS_LOCK:
        host = _HOSTS.get(key)
        if host is None:
            host = _HOSTS[key] = AdapterHost(base, device=key[1])
        return host
