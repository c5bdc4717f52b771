"""Supervised fine-tuning of all-MiniLM-L6-v2's six transformer layers on a job's intent labels (TensorFlow autodiff).

A linear probe then fine-tuning ("LP-FT"): the softmax head first goes to its L-BFGS optimum on the frozen
sentence vectors, then the layers and that head take a few epochs of Adam on the cross-entropy of minibatches, at a
small learning rate, so the encoder moves towards the job's classes without forgetting what it knew. On banking77
10-shot this lifted MiniLM from 0.858 to 0.870 (seed 0; benchmarks/local_backend.py has the figures of the embedder
that uses it). TensorFlow is already there (Rasa depends on it) and is imported only when a job tunes; the tuned
layers are returned as arrays (prefix TUNED_PREFIX, stored with the model) and run by minilm.py's numpy forward
pass at inference. The word and position embeddings stay frozen.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from rasa_gpt3.local.minilm import DIMENSION, MiniLMEncoder, _layer_norm, padded_batch

TUNED_PREFIX = "minilm_"
EPOCHS = 3
LEARNING_RATE = 5e-5
BATCH_SIZE = 16
_HEADS = 12
_ARRAYS_PER_LAYER = 12


def layers_to_arrays(layers: Sequence[Sequence[np.ndarray]]) -> Dict[str, np.ndarray]:
    """The layers as named arrays to store with a model."""
    return {
        f"{TUNED_PREFIX}{index}_{part}": np.asarray(array, dtype=np.float32)
        for index, layer in enumerate(layers)
        for part, array in enumerate(layer)
    }


def arrays_to_layers(arrays: Dict[str, np.ndarray]) -> Optional[List[tuple]]:
    """The tuned layers stored by layers_to_arrays, or None when `arrays` has none."""
    if f"{TUNED_PREFIX}0_0" not in arrays:
        return None
    count = len({key.split("_")[1] for key in arrays if key.startswith(TUNED_PREFIX)})
    return [
        tuple(arrays[f"{TUNED_PREFIX}{index}_{part}"] for part in range(_ARRAYS_PER_LAYER)) for index in range(count)
    ]


def tune_layers(
    encoder: MiniLMEncoder,
    texts: Sequence[str],
    labels: Sequence[str],
    seed: int = 0,
    should_stop: Optional[Callable[[], bool]] = None,
) -> Dict[str, np.ndarray]:
    """The encoder's layers fine-tuned on (text, label) pairs, as arrays for layers_to_arrays' reader."""
    import tensorflow as tf

    from rasa_gpt3.local.trainer import L2_STRENGTH, TrainingCancelled, fit_logistic_head

    names = sorted(set(labels))
    targets = np.array([names.index(label) for label in labels], dtype=np.int32)
    weights, bias = fit_logistic_head(encoder.encode(texts), targets, len(names), should_stop=should_stop)
    tokens = [encoder.tokenizer.encode(text) for text in texts]
    layers = [[tf.Variable(array) for array in layer] for layer in encoder.layers]
    head = [tf.Variable(weights), tf.Variable(bias)]
    trainable = [variable for layer in layers for variable in layer] + head
    optimizer = tf.keras.optimizers.Adam(LEARNING_RATE)
    head_dim = DIMENSION // _HEADS

    def norm(x, weight, offset):
        mean = tf.reduce_mean(x, -1, keepdims=True)
        variance = tf.reduce_mean(tf.square(x - mean), -1, keepdims=True)
        return (x - mean) / tf.sqrt(variance + 1e-12) * weight + offset

    def sentence_vectors(hidden, mask):
        batch, length = tf.shape(hidden)[0], tf.shape(hidden)[1]
        key_bias = tf.where(mask, 0.0, -1e9)[:, None, None, :]
        for qkv, qkv_bias, out, out_bias, norm1_w, norm1_b, up, up_bias, down, down_bias, norm2_w, norm2_b in layers:
            projected = tf.reshape(tf.tensordot(hidden, qkv, 1) + qkv_bias, [batch, length, 3, _HEADS, head_dim])
            query = tf.transpose(projected[:, :, 0], [0, 2, 1, 3]) / np.sqrt(head_dim).astype(np.float32)
            key = tf.transpose(projected[:, :, 1], [0, 2, 1, 3])
            value = tf.transpose(projected[:, :, 2], [0, 2, 1, 3])
            attention = tf.nn.softmax(tf.matmul(query, key, transpose_b=True) + key_bias, -1)
            context = tf.reshape(tf.transpose(tf.matmul(attention, value), [0, 2, 1, 3]), [batch, length, DIMENSION])
            hidden = norm(tf.tensordot(context, out, 1) + out_bias + hidden, norm1_w, norm1_b)
            inner = tf.nn.gelu(tf.tensordot(hidden, up, 1) + up_bias, approximate=False)
            hidden = norm(tf.tensordot(inner, down, 1) + down_bias + hidden, norm2_w, norm2_b)
        weights_ = tf.cast(mask, tf.float32)[:, :, None]
        return tf.math.l2_normalize(tf.reduce_sum(hidden * weights_, 1) / tf.reduce_sum(weights_, 1), -1)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, None, DIMENSION], tf.float32),
            tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None], tf.int32),
        ]
    )
    def step(hidden, mask, batch_targets):
        with tf.GradientTape() as tape:
            logits = tf.matmul(sentence_vectors(hidden, mask), head[0]) + head[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch_targets, logits))
            loss += 0.5 * L2_STRENGTH * tf.reduce_sum(tf.square(head[0]))
        optimizer.apply_gradients(zip(tape.gradient(loss, trainable), trainable))
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(EPOCHS):
        order = rng.permutation(len(texts))
        for start in range(0, len(order), BATCH_SIZE):
            if should_stop is not None and should_stop():
                raise TrainingCancelled()
            chunk = order[start : start + BATCH_SIZE]
            ids, mask = padded_batch([tokens[i] for i in chunk])
            # the embedding layer stays frozen: its output is computed in numpy
            embedded = _layer_norm(encoder.word[ids] + encoder.position[: ids.shape[1]], *encoder.embedding_norm)
            step(tf.constant(embedded, tf.float32), tf.constant(mask), tf.constant(targets[chunk]))
    return layers_to_arrays([[variable.numpy() for variable in layer] for layer in layers])
