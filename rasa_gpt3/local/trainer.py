"""What a fine-tuning job on the local backend really does: a softmax head over sentence embeddings, or a
retrieval index.

Classification-like data (job metadata `task: intent`, or: at least two distinct answers and every answer one token
of the base model's encoding) trains a linear softmax head on the embedded user texts with minibatch gradient
descent (Adam), for the job's n_epochs / batch_size / learning_rate_multiplier. The weights start at the class
centroids of the embeddings (a standard "imprinting" start that makes tiny data sets usable after few steps), then
every step is a real gradient step whose true train loss/accuracy is reported, with the loss/accuracy on a
validation batch, and the full validation set at each epoch's end.

Everything else (entities, responses) becomes a retrieval model: the embedded training inputs and their answers.
It retrieves the most similar training answer; it never writes new text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import BaseModel, default_epochs
from rasa_gpt3.data.tokens import get_encoding, is_single_token
from rasa_gpt3.local.engines import Hyperparameters, TrainingCancelled

CLASSIFICATION = "classification"
RETRIEVAL = "retrieval"

# Adam step size at learning_rate_multiplier 1.0 (chosen on banking77, see benchmarks/local_backend.py)
BASE_LEARNING_RATE = 0.01
WEIGHT_DECAY = 1e-4
# logit scale of the centroid start: unit vectors times this give a confident but not saturated first guess
CENTROID_SCALE = 10.0
MAX_BATCH_SIZE = 256


@dataclass(frozen=True)
class Example:
    """One training pair: the input text the model sees and the answer it must give."""

    text: str
    answer: str


def examples_from_records(records: Sequence[Dict[str, Any]]) -> List[Example]:
    """Training pairs from fine-tune records (chat or prompt/completion), through prompts' own readers."""
    return [Example(prompts.record_prompt_text(record), prompts.record_answer(record)) for record in records]


def resolve_hyperparameters(requested: Optional[Dict[str, Any]], n_examples: int) -> Hyperparameters:
    """Fills 'auto' or missing values the way OpenAI does (epochs by data size, batch about 0.2% of the data)."""
    requested = requested or {}

    def given(key: str) -> Any:
        value = requested.get(key)
        return None if value in (None, "auto") else value

    n_epochs = int(given("n_epochs") or default_epochs(n_examples))
    batch_size = int(given("batch_size") or max(1, min(MAX_BATCH_SIZE, round(n_examples * 0.002))))
    multiplier = float(given("learning_rate_multiplier") or 1.0)
    return Hyperparameters(n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=multiplier)


def classify_data(examples: Sequence[Example], base_model: BaseModel, task: Optional[str] = None) -> str:
    """CLASSIFICATION or RETRIEVAL: what kind of model this data asks for."""
    if task == "intent":
        return CLASSIFICATION
    if task in ("entities", "response"):
        return RETRIEVAL
    answers = {example.answer for example in examples}
    if len(answers) < 2:
        return RETRIEVAL
    encoding = get_encoding(base_model.encoding)
    for answer in answers:
        label = prompts.label_token(answer, base_model.format)
        if not answer or not (is_single_token(answer, encoding) or is_single_token(label, encoding)):
            return RETRIEVAL
    return CLASSIFICATION


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _loss_and_accuracy(probabilities: np.ndarray, targets: np.ndarray) -> Tuple[float, float]:
    picked = probabilities[np.arange(len(targets)), targets]
    loss = float(-np.log(np.maximum(picked, 1e-12)).mean())
    accuracy = float((probabilities.argmax(axis=1) == targets).mean())
    return loss, accuracy


def _rows(matrix, index):
    return matrix[index]


def centroid_weights(features, targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Initial head weights: each class's mean embedding, unit length, times CENTROID_SCALE."""
    dim = features.shape[1]
    weights = np.zeros((dim, n_classes), dtype=np.float32)
    for label in range(n_classes):
        rows = features[targets == label]
        if rows.shape[0] == 0:
            continue
        mean = np.asarray(rows.mean(axis=0)).ravel()
        norm = float(np.linalg.norm(mean))
        if norm > 0:
            weights[:, label] = mean / norm * CENTROID_SCALE
    return weights


_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8


def _adam_update(
    param: np.ndarray,
    grad: np.ndarray,
    moment: np.ndarray,
    velocity: np.ndarray,
    step: int,
    learning_rate: float,
    rows: Optional[np.ndarray] = None,
) -> None:
    """One Adam step on `param` in place (on `rows` only when given)."""
    if rows is not None:
        m = _BETA1 * moment[rows] + (1 - _BETA1) * grad
        v = _BETA2 * velocity[rows] + (1 - _BETA2) * grad * grad
        moment[rows], velocity[rows] = m, v
        param[rows] -= learning_rate * (m / (1 - _BETA1**step)) / (np.sqrt(v / (1 - _BETA2**step)) + _EPSILON)
        return
    moment *= _BETA1
    moment += (1 - _BETA1) * grad
    velocity *= _BETA2
    velocity += (1 - _BETA2) * grad * grad
    param -= learning_rate * (moment / (1 - _BETA1**step)) / (np.sqrt(velocity / (1 - _BETA2**step)) + _EPSILON)


StepCallback = Callable[[Dict[str, Any]], None]


def train_softmax_head(
    train_features,
    train_targets: np.ndarray,
    valid_features,
    valid_targets: Optional[np.ndarray],
    n_classes: int,
    hyperparameters: Hyperparameters,
    seed: int,
    on_step: Optional[StepCallback] = None,
    on_epoch: Optional[StepCallback] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, np.ndarray]:
    """Trains W, b of softmax(x·W + b) with Adam minibatches; reports every step's true metrics to `on_step`.

    Features may be a dense array or a scipy sparse matrix. `on_step` gets a dict with step, epoch, train_loss,
    train_mean_token_accuracy and, when there is validation data, valid_loss / valid_mean_token_accuracy on a
    validation batch; `on_epoch` gets the epoch's full validation loss/accuracy. `should_stop` is polled
    between steps and raises TrainingCancelled when it returns True.
    """
    rng = np.random.default_rng(seed)
    n = train_features.shape[0]
    weights = centroid_weights(train_features, train_targets, n_classes)
    bias = np.zeros(n_classes, dtype=np.float32)
    learning_rate = BASE_LEARNING_RATE * hyperparameters.learning_rate_multiplier
    sparse = hasattr(train_features, "tocsr")
    if sparse:
        from scipy.sparse import csr_matrix

        train_features = train_features.tocsr()
    moments = [np.zeros_like(weights), np.zeros_like(bias)]
    velocities = [np.zeros_like(weights), np.zeros_like(bias)]
    batch_size = max(1, min(hyperparameters.batch_size, n))
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = steps_per_epoch * hyperparameters.n_epochs
    has_valid = valid_targets is not None and len(valid_targets) > 0
    step = 0
    for epoch in range(1, hyperparameters.n_epochs + 1):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            if should_stop is not None and should_stop():
                raise TrainingCancelled()
            index = order[start : start + batch_size]
            batch = _rows(train_features, index)
            targets = train_targets[index]
            probabilities = softmax(np.asarray(batch @ weights) + bias)
            train_loss, train_accuracy = _loss_and_accuracy(probabilities, targets)
            gradient = probabilities
            gradient[np.arange(len(index)), targets] -= 1.0
            gradient /= len(index)
            step += 1
            if sparse:
                # lazy Adam: only the weight rows of features present in the batch move (TF-IDF has ~30k rows)
                rows, columns = np.unique(batch.indices, return_inverse=True)
                compact = csr_matrix((batch.data, columns, batch.indptr), shape=(batch.shape[0], len(rows)))
                row_grad = np.asarray(compact.T @ gradient) + WEIGHT_DECAY * weights[rows]
                _adam_update(weights, row_grad, moments[0], velocities[0], step, learning_rate, rows)
            else:
                _adam_update(
                    weights,
                    np.asarray(batch.T @ gradient) + WEIGHT_DECAY * weights,
                    moments[0],
                    velocities[0],
                    step,
                    learning_rate,
                )
            _adam_update(bias, gradient.sum(axis=0), moments[1], velocities[1], step, learning_rate)
            metrics: Dict[str, Any] = {
                "step": step,
                "total_steps": total_steps,
                "epoch": epoch,
                "train_loss": train_loss,
                "train_mean_token_accuracy": train_accuracy,
            }
            if has_valid:
                valid_index = rng.choice(len(valid_targets), size=min(batch_size, len(valid_targets)), replace=False)
                valid_probabilities = softmax(np.asarray(_rows(valid_features, valid_index) @ weights) + bias)
                metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = _loss_and_accuracy(
                    valid_probabilities, valid_targets[valid_index]
                )
            if on_step is not None:
                on_step(metrics)
        if on_epoch is not None:
            summary: Dict[str, Any] = {"step": step, "epoch": epoch, "total_steps": total_steps}
            if has_valid:
                full = softmax(np.asarray(valid_features @ weights) + bias)
                summary["full_valid_loss"], summary["full_valid_mean_token_accuracy"] = _loss_and_accuracy(
                    full, valid_targets
                )
            on_epoch(summary)
    return {"weights": weights, "bias": bias}
