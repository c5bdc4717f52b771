"""Fixtures of the LoRA engine's tests: the tiny stand-in base model, financial-demo's intent records relabelled
for its tokenizer, and one adapter trained on them. CPU only; nothing is downloaded."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest

# every test here runs offline: a download attempt fails instead of reaching the Hugging Face Hub
os.environ["HF_HUB_OFFLINE"] = "1"
pytest.importorskip("peft", reason="the lora extra is not installed (pip install 'rasa-gpt3[lora]')")

from tests.conftest import FINANCIAL_DEMO  # noqa: E402

# the tiny random model needs a far larger step than a pretrained one: 50 x 2e-4 = 1e-2
TINY_LEARNING_RATE_MULTIPLIER = 50.0


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """The tiny stand-in model (2 layers, hidden 64, tokenizer trained on financial-demo) as a BaseModelSource."""
    from rasa_gpt3.local.lora.base_model import resolve_base_model
    from rasa_gpt3.local.lora.tiny import bot_texts, build_tiny_model

    path = build_tiny_model(tmp_path_factory.mktemp("tiny-model"), bot_texts(FINANCIAL_DEMO))
    return resolve_base_model(str(path))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from rasa_gpt3.local.lora.base_model import load_tokenizer

    return load_tokenizer(tiny_base, needs_chat_template=True)


@pytest.fixture(scope="session")
def financial_demo_export():
    """financial-demo's intent export (chat records, 80/20 split) as rasa_gpt3.data.export writes it."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project

    project = load_project(FINANCIAL_DEMO)
    return export_task("intent", project.nlu, project.domain, project.stories)


def relabel(records: List[Dict[str, Any]], old_codec, new_codec) -> List[Dict[str, Any]]:
    """Chat intent records with each answer swapped from `old_codec`'s label to `new_codec`'s."""
    relabelled = []
    for record in records:
        intent = old_codec.intent_of(record["messages"][-1]["content"])
        messages = record["messages"][:-1] + [{"role": "assistant", "content": new_codec.label_of(intent)}]
        relabelled.append({"messages": messages})
    return relabelled


@pytest.fixture(scope="session")
def tiny_codec(financial_demo_export, tiny_tokenizer):
    """The label codec built for the tiny model's tokenizer through rendering.one_token_predicate."""
    from rasa_gpt3.data.labels import LabelCodec
    from rasa_gpt3.local.lora.rendering import one_token_predicate, tokenizer_name

    return LabelCodec.build(
        financial_demo_export.codec.labels,
        tokenizer_name(tiny_tokenizer),
        "chat",
        is_one_token=one_token_predicate(tiny_tokenizer, "chat"),
    )


@pytest.fixture(scope="session")
def tiny_records(financial_demo_export, tiny_codec):
    """(train, valid) chat records of financial-demo whose labels are single tokens of the tiny model."""
    old = financial_demo_export.codec
    return relabel(financial_demo_export.train, old, tiny_codec), relabel(financial_demo_export.valid, old, tiny_codec)


@pytest.fixture(scope="session")
def trained(tiny_base, tiny_records, tmp_path_factory):
    """An adapter trained for 2 epochs on all of financial-demo's training records, with what the callbacks saw."""
    from rasa_gpt3.local.engines import Hyperparameters
    from rasa_gpt3.local.lora.training import train_adapter

    steps: List[Dict[str, Any]] = []
    epochs: List[Dict[str, Any]] = []
    train, valid = tiny_records
    result = train_adapter(
        tiny_base,
        train,
        valid,
        Hyperparameters(n_epochs=2, batch_size=16, learning_rate_multiplier=TINY_LEARNING_RATE_MULTIPLIER),
        tmp_path_factory.mktemp("lora-run"),
        seed=7,
        on_step=steps.append,
        on_epoch=epochs.append,
        device="cpu",
    )
    return result, steps, epochs
