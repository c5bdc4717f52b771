"""A real few-shot fine-tune on banking77 through the SDK: held-out accuracy far above chance (1/77)."""

from __future__ import annotations

import csv
import random
from collections import defaultdict

import pytest

from rasa_gpt3 import prompts
from tests.conftest import BANKING77


def _by_intent(path):
    grouped = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            grouped[row["category"]].append(row["text"])
    return grouped


@pytest.mark.skipif(not (BANKING77 / "train.csv").is_file(), reason="banking77 corpus not next to the repo")
def test_banking77_ten_shot_fine_tune_is_far_above_chance(local_backend):
    rng = random.Random(13)
    train = _by_intent(BANKING77 / "train.csv")
    test = _by_intent(BANKING77 / "test.csv")
    assert len(train) == 77
    records = [
        prompts.intent_record(text, intent, "chat")
        for intent, texts in sorted(train.items())
        for text in rng.sample(texts, 10)
    ]
    job = local_backend.fine_tune(records, metadata={"task": "intent"}, timeout=180)
    assert job.status == "succeeded", job.error
    held_out = [(text, intent) for intent, texts in sorted(test.items()) for text in rng.sample(texts, 3)]
    correct = 0
    for text, intent in held_out:
        answer = local_backend.client.chat.completions.create(
            model=job.fine_tuned_model,
            temperature=0,
            max_tokens=16,  # room for the whole label: banking77's intent names are several tokens each
            logprobs=True,
            top_logprobs=5,
            **prompts.intent_request(text, "chat"),
        )
        correct += answer.choices[0].message.content == intent
    accuracy = correct / len(held_out)
    print(f"banking77 10-shot held-out accuracy via the API: {accuracy:.3f} on {len(held_out)} texts")
    assert accuracy > 0.5  # chance is 0.013
