"""The stand-in engine's model at inference time (see standin.py): which answer, with which log-probabilities.

A classification model scores every label with its softmax head; a retrieval model scores the distinct training
answers by the cosine similarity of their inputs to the request (softmax over similarities / RETRIEVAL_TEMPERATURE),
and answers the model's unknown text when even the best match is below its similarity threshold.

Its answers look like a real model's, so what works against it works against OpenAI:
- Tokens are the pieces the base model's tokenizer (its tiktoken encoding) splits the answer into, a classification
  label too: a label of several tokens comes back piece by piece, and at `max_tokens` 1 only its first piece.
- An answer that does not fit in `max_tokens` (a chat answer's end-of-message token counts) ends with
  finish_reason `length`.
- Each token's log-probability and alternatives follow the chain rule over the candidate answers (p(token | prefix)
  is the mass of the answers continuing the prefix with that token), but a real model also puts probability on
  pieces no answer continues with. The stand-in leaves OTHER_FLOOR + OTHER_SHARE * (1 - q) for them, q being the
  most likely candidate piece's share: next to nothing where every candidate agrees, more where the model hesitates
  between answers. Half of it goes to up to two plausible non-answer pieces that are listed among the alternatives
  (the likeliest piece with its leading space or its first letter's case toggled, else a newline or a quote: the
  slips a fine-tuned model makes), the other half to the rest of the vocabulary, never listed. So the alternatives
  include pieces that are no label and sum to less than 1, the likeliest answer stays the likeliest, and
  renormalising over the known labels (what the intent classifier does) gives back the candidates' shares.
- Log-probabilities are of float32 probabilities, as the API's are: a piece within 6e-8 of certain is logprob 0.0.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import openai_base_model
from rasa_gpt3.data.tokens import get_encoding
from rasa_gpt3.local.embedder import EMBEDDERS, STATE_PREFIX, get_embedder, similarity_threshold
from rasa_gpt3.local.engines import Generation, Prompt, answer_text
from rasa_gpt3.local.entities import add_known_values, carry_entities
from rasa_gpt3.local.trainer import CLASSIFICATION, softmax

# similarity differences of 0.05 make a factor e in probability: sharp but not one-hot for near-ties
RETRIEVAL_TEMPERATURE = 0.05
DEFAULT_UNKNOWN_TEXT = "Sorry, I don't know."
ENV_UNKNOWN_TEXT = "RASA_GPT3_UNKNOWN_TEXT"
# cosine similarity below which a retrieval model does not know, per embedder (reasons next to each in embedder.py)
DEFAULT_SIMILARITY_THRESHOLD = {name: similarity_threshold(name) for name in EMBEDDERS}
MIN_LOGPROB = -9999.0
# the stand-in reads at most the first this many characters of a request's text (and of a training input): the
# sentence encoder's cost grows faster than the text and it holds a process-wide lock, while a chat message says what
# it wants early; 2,000 characters embed in about 0.08 s, a 500 KB text took 28 s and 2.9 GB
MAX_READ_CHARS = 2000
# answers considered for token log-probabilities (the rest carry negligible probability)
MAX_CANDIDATES = 64
# probability a token position leaves for pieces no candidate answer continues with (module docstring)
OTHER_FLOOR = 1e-9
OTHER_SHARE = 0.05
# the shares of that probability given to the listed non-answer pieces, likeliest first (the rest is unlisted)
LISTED_OTHER_SHARES = (1 / 3, 1 / 6)
# pieces offered when neither variant of the likeliest piece is a token of its own
FALLBACK_OTHER_PIECES = ("\n", '"')


class LocalModel:
    """A loaded stand-in model (metadata + arrays from the store); it follows the engines.Engine protocol."""

    def __init__(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        self.meta = meta
        self.id = meta["id"]
        self.kind = meta["kind"]
        self.format = meta["format"]
        self.answers: List[str] = list(meta["answers"])
        self.embedder = get_embedder(meta["embedder"])
        self.embedder_state = {k: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
        self.arrays = arrays
        self._unknown_text = meta.get("unknown_text")
        self.threshold = float(meta.get("similarity_threshold", DEFAULT_SIMILARITY_THRESHOLD[meta["embedder"]]))
        self._encoding = get_encoding(meta["encoding"])
        self._token_cache: Dict[str, List[str]] = {}
        self._known_pieces: Optional[FrozenSet[str]] = None
        self._lock = threading.Lock()
        if self.kind != CLASSIFICATION:
            self.index = index_matrix(arrays)
        self.entity_model = bool(meta.get("entity_answers"))
        self.texts: List[str] = list(meta.get("texts") or [])
        self.gazetteer = list(meta.get("gazetteer") or [])

    @property
    def context_length(self) -> int:
        """The context size of the base model this model was fine-tuned on."""
        return openai_base_model(self.id).context

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` in the base model's encoding."""
        return len(self._encoding.encode_ordinary(text)) if text else 0

    @property
    def unknown_text(self) -> str:
        """What a retrieval model answers below its similarity threshold: job metadata, else the environment."""
        return self._unknown_text or os.environ.get(ENV_UNKNOWN_TEXT) or DEFAULT_UNKNOWN_TEXT

    # ------------------------------------------------------------------ scoring

    def embed(self, texts: Sequence[str]):
        """Feature rows of `texts` in this model's embedding space."""
        return self.embedder.encode(list(texts), self.embedder_state)

    def class_probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """A classification model's probabilities of each answer (columns as self.answers) for each of `texts`."""
        features = self.embed(texts)
        return softmax(np.asarray(features @ self.arrays["weights"]) + self.arrays["bias"])

    def rank(self, text: str) -> List[Tuple[str, float]]:
        """Every candidate answer with its probability, most likely first."""
        if self.kind == CLASSIFICATION:
            probabilities = self.class_probabilities([text])[0]
            order = np.argsort(-probabilities)
            return [(self.answers[i], float(probabilities[i])) for i in order]
        features = self.embed([text])
        product = features @ self.index.T
        similarities = (product.toarray() if hasattr(product, "toarray") else np.asarray(product)).ravel()
        best = np.full(len(self.answers), -1.0)
        np.maximum.at(best, self.arrays["answer_of"], similarities)
        nearest = int(np.argmax(similarities))
        top_similarity = float(similarities[nearest])
        probabilities = softmax((best / RETRIEVAL_TEMPERATURE)[None, :])[0]
        order = np.argsort(-probabilities)
        ranked = [(self.answers[i], float(probabilities[i])) for i in order]
        known = top_similarity >= self.threshold
        if self.entity_model:
            return self._entity_ranking(text, ranked, nearest if known else None, top_similarity)
        if not known:
            # not known: the unknown text takes the probability the similarity leaves over
            unknown = min(1.0, max(1e-6, 1.0 - max(top_similarity, 0.0)))
            ranked = [(self.unknown_text, unknown)] + [(answer, p * (1 - unknown)) for answer, p in ranked]
        return ranked

    def _entity_ranking(
        self, text: str, ranked: List[Tuple[str, float]], nearest: Optional[int], top_similarity: float
    ) -> List[Tuple[str, float]]:
        """Entity answers: the nearest example's entities carried onto `text`, plus known values found in it."""
        carried = []
        if nearest is not None:
            example_answer = self.answers[int(self.arrays["answer_of"][nearest])]
            carried = carry_entities(self.texts[nearest], prompts.parse_entities(example_answer), text)
            probability = ranked[0][1]
        else:
            probability = min(1.0, max(1e-6, 1.0 - max(top_similarity, 0.0)))
        entities = add_known_values(carried, self.gazetteer, text)
        answer = prompts.render_entities(entities) if (entities or nearest is not None) else self.unknown_text
        return [(answer, probability)] + [(a, p * (1 - probability)) for a, p in ranked if a != answer]

    # ------------------------------------------------------------------ generation

    def _tokens(self, answer: str) -> List[str]:
        """The answer's full text split as the base model's tokenizer splits it (a label of several tokens too)."""
        with self._lock:
            cached = self._token_cache.get(answer)
        if cached is not None:
            return cached
        text = answer_text(answer, self.format)
        pieces = [self._encoding.decode_single_token_bytes(t) for t in self._encoding.encode_ordinary(text)]
        tokens = _pieces_to_text(pieces) or [text]
        with self._lock:
            if len(self._token_cache) > 4096:
                self._token_cache.clear()
            self._token_cache[answer] = tokens
        return tokens

    def _answer_pieces(self) -> FrozenSet[str]:
        """Every piece of every answer this model can give (never offered as a non-answer piece)."""
        with self._lock:
            known = self._known_pieces
        if known is None:
            known = frozenset(piece for answer in self.answers for piece in self._tokens(answer))
            with self._lock:
                self._known_pieces = known
        return known

    def _other_pieces(self, likeliest: str, candidates: Iterable[str]) -> List[str]:
        """Up to two plausible pieces that continue no answer: variants of the likeliest piece, else fallbacks."""
        variants = [likeliest[1:] if likeliest.startswith(" ") else " " + likeliest]
        letter = next((i for i, char in enumerate(likeliest) if char.isalpha()), None)
        if letter is not None:
            variants.append(likeliest[:letter] + likeliest[letter].swapcase() + likeliest[letter + 1 :])
        known = self._answer_pieces().union(candidates)  # a rendered entity answer need not be a training answer
        chosen: List[str] = []
        for piece in variants + list(FALLBACK_OTHER_PIECES):
            if piece and piece not in known and piece not in chosen and self._is_one_token(piece):
                chosen.append(piece)
        return chosen[: len(LISTED_OTHER_SHARES)]

    def _is_one_token(self, piece: str) -> bool:
        return len(self._encoding.encode_ordinary(piece)) == 1

    def request_text(self, prompt: Prompt) -> str:
        """The text a request is matched on: the prompt read as the training records' inputs were read."""
        if isinstance(prompt, str):
            return reading_window(prompts.record_prompt_text({"prompt": prompt, "completion": ""}))
        messages = [m for m in prompt if m["role"] != "developer"] + [{"role": "assistant", "content": ""}]
        return reading_window(prompts.record_prompt_text({"messages": messages}))

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int] = None,
        stops: Sequence[str] = (),
        temperature: Optional[float] = None,
        seed: Optional[int] = None,
        top_logprobs: int = 0,
    ) -> Generation:
        """The best answer to `prompt` (sampled when `temperature` > 0), with finish_reason `length` when it does not
        fit in `max_tokens`; it never cuts the answer itself, the handlers cut."""
        ranked = self.rank(self.request_text(prompt))
        chosen = ranked[0]
        if temperature is not None and temperature > 0 and len(ranked) > 1:
            probabilities = np.array([p for _, p in ranked], dtype=np.float64)
            weights = np.power(np.maximum(probabilities, 1e-12), 1.0 / temperature)
            rng = np.random.default_rng(seed)
            chosen = ranked[int(rng.choice(len(ranked), p=weights / weights.sum()))]
        tokens = self._tokens(chosen[0])
        # chain rule over the answer distribution: each token's probability is the mass of the answers that
        # continue the prefix with it, over the mass of all answers sharing the prefix; they multiply to p(answer)
        alive = [(self._tokens(answer), probability) for answer, probability in ranked[:MAX_CANDIDATES]]
        if not any(candidate == tokens for candidate, _ in alive):
            alive.append((tokens, chosen[1]))
        logprobs: List[float] = []
        tops: List[List[Tuple[str, float]]] = []
        for position, token in enumerate(tokens):
            following: Dict[str, float] = {}
            for candidate, probability in alive:
                if len(candidate) > position:
                    following[candidate[position]] = following.get(candidate[position], 0.0) + probability
            total = sum(following.values()) or 1.0
            shares = {piece: mass / total for piece, mass in following.items()}
            likeliest = max(shares, key=lambda piece: shares[piece])
            other = OTHER_FLOOR + OTHER_SHARE * (1.0 - shares[likeliest])
            candidates = {piece: share * (1.0 - other) for piece, share in shares.items()}
            for piece, portion in zip(self._other_pieces(likeliest, shares), LISTED_OTHER_SHARES):
                candidates[piece] = other * portion
            logprobs.append(_log(candidates.get(token, 0.0)))
            ranked_next = sorted(candidates.items(), key=lambda item: -item[1])[: max(top_logprobs, 1)]
            tops.append([(piece, _log(probability)) for piece, probability in ranked_next])
            alive = [(c, p) for c, p in alive if len(c) > position and c[position] == token]
        # an answer of max_tokens tokens or more has no room left for what ends it (a chat answer's end-of-message
        # token, whatever a completion writes after its stop sequence): the API then says `length`
        finish_reason = "length" if max_tokens is not None and len(tokens) >= max_tokens else "stop"
        return Generation(tokens=list(tokens), logprobs=logprobs, top=tops, finish_reason=finish_reason)


def reading_window(text: str) -> str:
    """The part of `text` the stand-in reads: all of it, or its first MAX_READ_CHARS characters ending at a space."""
    if len(text) <= MAX_READ_CHARS:
        return text
    space = text.rfind(" ", MAX_READ_CHARS // 2, MAX_READ_CHARS)
    return text[: space if space > 0 else MAX_READ_CHARS]


def _log(probability: float) -> float:
    """The log of `probability` as a float32, as the API computes it (0.0 within float32's resolution of 1)."""
    single = float(np.float32(probability))
    return max(MIN_LOGPROB, math.log(single)) if single > 0 else MIN_LOGPROB


def _pieces_to_text(pieces: List[bytes]) -> List[str]:
    """Token byte pieces as text, joining pieces that split a UTF-8 character so every token decodes."""
    tokens: List[str] = []
    pending = b""
    for piece in pieces:
        pending += piece
        try:
            tokens.append(pending.decode("utf-8"))
            pending = b""
        except UnicodeDecodeError:
            continue
    if pending:
        tokens.append(pending.decode("utf-8", errors="replace"))
    return tokens


def index_arrays(features) -> Dict[str, np.ndarray]:
    """The retrieval index as storable arrays: dense rows, or a sparse matrix's CSR parts."""
    if hasattr(features, "tocsr"):
        csr = features.tocsr()
        return {
            "index_data": csr.data.astype(np.float32),
            "index_indices": csr.indices,
            "index_indptr": csr.indptr,
            "index_shape": np.array(csr.shape),
        }
    return {"index": np.asarray(features, dtype=np.float32)}


def index_matrix(arrays: Dict[str, np.ndarray]):
    """The retrieval index stored by index_arrays."""
    if "index" in arrays:
        return arrays["index"]
    from scipy.sparse import csr_matrix

    return csr_matrix(
        (arrays["index_data"], arrays["index_indices"], arrays["index_indptr"]), shape=tuple(arrays["index_shape"])
    )
