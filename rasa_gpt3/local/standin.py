"""The stand-in engine behind the seam of engines.py: trains a job into a softmax head or a retrieval index.

It fine-tunes every base model of data/base_models.yml (the gpt-* and babbage/davinci names OpenAI fine-tunes).
Training embeds the inputs with a sentence embedder (job metadata `embedder`, else the default), then either trains
the softmax head of trainer.py (classification-like data) or keeps the embedded inputs as a retrieval index with
their answers; model.py's LocalModel serves the result.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

from rasa_gpt3.data.base_models import openai_base_model
from rasa_gpt3.data.tool_calls import message_text
from rasa_gpt3.local.embedder import default_embedder_name, get_embedder
from rasa_gpt3.local.engines import EngineKind, TrainedModel, TrainingCancelled, TrainingRun
from rasa_gpt3.local.entities import build_gazetteer, is_entity_answer
from rasa_gpt3.local.model import (
    DEFAULT_SIMILARITY_THRESHOLD,
    RETRIEVAL_TEMPERATURE,
    LocalModel,
    index_arrays,
    reading_window,
)
from rasa_gpt3.local.trainer import (
    CLASSIFICATION,
    Example,
    classify_data,
    examples_from_records,
    softmax,
    train_softmax_head,
)

# leave-one-out training metrics of a retrieval model are measured on this many examples at most
RETRIEVAL_METRICS_SAMPLE = 2000


def train(run: TrainingRun) -> TrainedModel:
    """Trains the stand-in model of `run`: a softmax head for classification-like data, else a retrieval index."""
    metadata = run.metadata
    embedder = get_embedder(str(metadata.get("embedder") or default_embedder_name()).lower())
    train_examples = examples_from_records([_text_only(record) for record in run.train_records])
    valid = examples_from_records([_text_only(record) for record in run.valid_records])
    kind = classify_data(train_examples, run.base_model, metadata.get("task"))
    run.events.message(
        f"Training a {'softmax classifier' if kind == CLASSIFICATION else 'retrieval model'} "
        f"on {len(train_examples)} examples with the '{embedder.name}' sentence embedder"
    )
    # training inputs are read as requests are: at most their first MAX_READ_CHARS characters
    train_texts = [reading_window(e.text) for e in train_examples]
    # intent labels let an embedder that tunes on them (minilm-tuned) do so
    labels = [e.answer for e in train_examples] if kind == CLASSIFICATION else None
    state = embedder.fit(train_texts, labels, run.cancelled)
    train_features = embedder.encode(train_texts, state)
    if run.cancelled():
        raise TrainingCancelled()
    valid_features = embedder.encode([reading_window(e.text) for e in valid], state) if valid else None
    meta: Dict[str, Any] = {
        "kind": kind,
        "format": run.base_model.format,
        "encoding": run.base_model.encoding,
        "embedder": embedder.name,
    }
    arrays = dict(state)
    if kind == CLASSIFICATION:
        labels = sorted({e.answer for e in train_examples})
        index = {label: i for i, label in enumerate(labels)}
        targets = np.array([index[e.answer] for e in train_examples])
        known = [i for i, e in enumerate(valid) if e.answer in index]
        valid_targets = np.array([index[valid[i].answer] for i in known]) if known else None
        if valid and len(known) < len(valid):
            run.events.message(
                f"{len(valid) - len(known)} validation example(s) have answers not in the training "
                "file and are left out of the validation metrics",
                level="warn",
            )
        valid_rows = valid_features[known] if known else None
        head = train_softmax_head(
            train_features,
            targets,
            valid_rows,
            valid_targets,
            len(labels),
            run.hyperparameters,
            seed=run.seed,
            on_step=run.events.step,
            on_epoch=run.events.checkpoint,
            should_stop=run.cancelled,
        )
        meta["answers"] = labels
        arrays.update(head)
    else:
        meta.update(_retrieval(run, train_examples, valid, train_features, valid_features, embedder.name))
        position = {answer: i for i, answer in enumerate(meta["answers"])}
        arrays.update(index_arrays(train_features))
        arrays["answer_of"] = np.array([position[e.answer] for e in train_examples], dtype=np.int64)
    return TrainedModel(meta=meta, arrays=arrays)


def _text_only(record: Dict[str, Any]) -> Dict[str, Any]:
    """A chat record whose every message has text content: a tool or function call becomes `name(arguments)`.

    The stand-in learns to answer a call as that text (it retrieves answers, it does not call tools).
    """
    if "messages" not in record or all(isinstance(m.get("content"), str) for m in record["messages"]):
        return record
    return {"messages": [{"role": m["role"], "content": message_text(m)} for m in record["messages"]]}


def _retrieval(
    run: TrainingRun, train: List[Example], valid: List[Example], train_features, valid_features, embedder_name: str
) -> Dict[str, Any]:
    """The metadata of a retrieval model; reports its one 'step': leave-one-out train and validation metrics."""
    metadata = run.metadata
    answers = sorted({e.answer for e in train})
    position = {answer: i for i, answer in enumerate(answers)}
    answer_of = np.array([position[e.answer] for e in train])

    def evaluate(features, examples, leave_one_out: bool) -> Tuple[float, float]:
        similarities = _dense(features @ train_features[: len(train)].T)
        if leave_one_out:
            np.fill_diagonal(similarities, -1.0)
        best = np.full((len(examples), len(answers)), -1.0)
        for column, answer in enumerate(answer_of):
            np.maximum(best[:, answer], similarities[:, column], out=best[:, answer])
        probabilities = softmax(best / RETRIEVAL_TEMPERATURE)
        targets = np.array([position.get(e.answer, -1) for e in examples])
        picked = np.where(targets >= 0, probabilities[np.arange(len(examples)), np.maximum(targets, 0)], 1e-12)
        loss = float(-np.log(np.maximum(picked, 1e-12)).mean())
        accuracy = float((probabilities.argmax(axis=1) == targets).mean())
        return loss, accuracy

    sample = train[:RETRIEVAL_METRICS_SAMPLE]
    metrics: Dict[str, Any] = {"step": 1, "total_steps": 1, "epoch": 1}
    metrics["train_loss"], metrics["train_mean_token_accuracy"] = evaluate(
        train_features[: len(sample)], sample, leave_one_out=True
    )
    if valid:
        metrics["valid_loss"], metrics["valid_mean_token_accuracy"] = evaluate(
            valid_features, valid, leave_one_out=False
        )
    run.events.step(metrics)
    task = metadata.get("task")
    if task == "entities" or (task is None and all(is_entity_answer(a) for a in answers)):
        # entity answers are carried over to the new message by word alignment (see local/entities.py)
        run.events.message("Entity answers: the nearest example's entities are aligned onto each new message")
        result_extra = {"entity_answers": True, "texts": [e.text for e in train], "gazetteer": build_gazetteer(answers)}
    else:
        result_extra = {}
    threshold = metadata.get("similarity_threshold")
    unknown = metadata.get("unknown_text")
    if unknown is None and task == "entities":
        unknown = "[]"
    result: Dict[str, Any] = {
        "answers": answers,
        "similarity_threshold": (
            float(threshold) if threshold is not None else DEFAULT_SIMILARITY_THRESHOLD[embedder_name]
        ),
    }
    if unknown is not None:
        result["unknown_text"] = str(unknown)
    result.update(result_extra)
    return result


def _dense(features) -> np.ndarray:
    return features.toarray() if hasattr(features, "toarray") else np.asarray(features)


ENGINE = EngineKind(name="standin", describe=openai_base_model, train=train, load=LocalModel)
