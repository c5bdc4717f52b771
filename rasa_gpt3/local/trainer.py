"""What a fine-tuning job on the local backend really does: a softmax head over sentence embeddings, or a
retrieval index.

Classification-like data (job metadata `task: intent`, or: at least two distinct answers and every answer one token
of the base model's encoding) trains a linear softmax head on the embedded user texts. Its objective is the mean
cross-entropy plus L2_STRENGTH/2·|W|², a convex problem: the head first goes to its optimum by full-batch L-BFGS
(from the class centroids), which on banking77 10-shot is 3-5 points above what Adam minibatches from the centroids
reached in OpenAI's 'auto' 3 epochs (MiniLM 0.830 -> 0.857, MiniLM+USE 0.815 -> 0.861, USE 0.764 -> 0.815).
Then come the job's n_epochs of Adam minibatch steps (batch_size, learning_rate_multiplier) on the same objective,
each a real gradient step whose true train loss/accuracy is reported, with the loss/accuracy on a validation batch,
and the full validation set at each epoch's end; starting at the optimum, they move it little.

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

# L2 strength of the head's objective: mean cross-entropy + L2_STRENGTH/2 |W|² (chosen on banking77, 1e-4 and 1e-6
# were both worse; see benchmarks/local_backend.py)
L2_STRENGTH = 1e-5
WEIGHT_DECAY = L2_STRENGTH
# Adam step size at learning_rate_multiplier 1.0: the minibatch steps start at the objective's optimum (the convex
# fit below), where larger steps only add minibatch noise (0.01 cost 3.5 points on banking77 10-shot)
BASE_LEARNING_RATE = 1e-4
# logit scale of the centroid start: unit vectors times this give a confident but not saturated first guess
CENTROID_SCALE = 10.0
MAX_BATCH_SIZE = 256
MAX_LBFGS_ITERATIONS = 300


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
    """Head weights that imprint the classes: each class's mean embedding, unit length, times CENTROID_SCALE."""
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


def fit_logistic_head(
    features,
    targets: np.ndarray,
    n_classes: int,
    l2: float = L2_STRENGTH,
    max_iterations: int = MAX_LBFGS_ITERATIONS,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """W, b minimising the mean cross-entropy of softmax(x·W + b) plus l2/2·|W|² (L-BFGS from the class centroids).

    The problem is convex, so this is the L2-regularised multinomial logistic regression optimum, whatever the start;
    the centroid start only makes it quick. `should_stop` is polled between iterations (TrainingCancelled).
    """
    from scipy.optimize import minimize

    n, dim = features.shape
    start = np.concatenate([centroid_weights(features, targets, n_classes).ravel(), np.zeros(n_classes, np.float32)])
    rows = np.arange(n)

    def loss_and_gradient(flat: np.ndarray) -> Tuple[float, np.ndarray]:
        weights = flat[: dim * n_classes].reshape(dim, n_classes)
        bias = flat[dim * n_classes :]
        probabilities = softmax(np.asarray(features @ weights) + bias)
        loss = -np.log(np.maximum(probabilities[rows, targets], 1e-12)).mean()
        loss += 0.5 * l2 * float((weights * weights).sum())
        probabilities[rows, targets] -= 1.0
        probabilities /= n
        grad_weights = np.asarray(features.T @ probabilities) + l2 * weights
        return float(loss), np.concatenate([grad_weights.ravel(), probabilities.sum(axis=0)]).astype(np.float64)

    def check(_: np.ndarray) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled()

    result = minimize(
        loss_and_gradient,
        start.astype(np.float64),
        jac=True,
        method="L-BFGS-B",
        callback=check,
        options={"maxiter": max_iterations},
    )
    flat = result.x.astype(np.float32)
    return flat[: dim * n_classes].reshape(dim, n_classes), flat[dim * n_classes :]


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
    weights, bias = fit_logistic_head(train_features, train_targets, n_classes, should_stop=should_stop)
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
