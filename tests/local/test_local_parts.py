"""The local backend's pure parts (no server): data kind, entities, stop/max_tokens cuts, ids, hyperparameters."""

from __future__ import annotations

import numpy as np

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import resolve_base_model
from rasa_gpt3.local import ids
from rasa_gpt3.local.api.completion_request import cut_generation
from rasa_gpt3.local.entities import add_known_values, build_gazetteer, carry_entities
from rasa_gpt3.local.model import Generation
from rasa_gpt3.local.trainer import (
    CLASSIFICATION,
    RETRIEVAL,
    Example,
    Hyperparameters,
    classify_data,
    resolve_hyperparameters,
    train_softmax_head,
)


def test_data_kind_follows_task_metadata_else_single_token_answers():
    chat, completion = resolve_base_model("gpt-4o-mini"), resolve_base_model("babbage-002")
    single = [Example("hi", "hello"), Example("bye", "bye")]
    multi = [Example("hi", "check_balance"), Example("bye", "transfer_money")]
    assert classify_data(single, chat) == CLASSIFICATION
    assert classify_data(multi, chat) == RETRIEVAL
    assert classify_data(multi, chat, task="intent") == CLASSIFICATION
    assert classify_data(single, chat, task="response") == RETRIEVAL
    assert classify_data([Example("a", "greet"), Example("b", "goodbye")], completion) == CLASSIFICATION  # " greet"
    assert classify_data([Example("a", "hello"), Example("b", "hello")], chat) == RETRIEVAL  # one answer


def test_auto_hyperparameters_resolve_like_openai():
    assert resolve_hyperparameters({}, 24) == Hyperparameters(n_epochs=5, batch_size=1, learning_rate_multiplier=1.0)
    assert resolve_hyperparameters({"n_epochs": "auto", "batch_size": 8}, 10_000).as_dict() == {
        "n_epochs": 2,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
    }


def test_softmax_head_learns_separable_data_and_reports_every_step():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 16)
    features = np.vstack([centers[i] + 0.3 * rng.normal(size=(20, 16)) for i in range(3)]).astype(np.float32)
    targets = np.repeat(np.arange(3), 20)
    steps, epochs = [], []
    head = train_softmax_head(
        features,
        targets,
        features[::4],
        targets[::4],
        3,
        Hyperparameters(3, 6, 1.0),
        seed=1,
        on_step=steps.append,
        on_epoch=epochs.append,
    )
    assert [s["step"] for s in steps] == list(range(1, 31)) and len(epochs) == 3
    predictions = (features @ head["weights"] + head["bias"]).argmax(axis=1)
    assert (predictions == targets).mean() > 0.95
    assert epochs[-1]["full_valid_mean_token_accuracy"] > 0.9


def test_entities_are_carried_onto_aligned_words_and_known_values_added():
    example = [{"entity": "amount", "value": "50"}, {"entity": "person", "value": "Anna"}]
    carried = carry_entities("send 50 dollars to Anna", example, "Send 75 dollars to Bob Smith")
    assert [(e["entity"], e["value"]) for e in carried] == [("amount", "75"), ("person", "Bob Smith")]
    assert carry_entities("send 50 dollars to Anna", example, "hello") == []
    gazetteer = build_gazetteer([prompts.render_entities([{"entity": "account", "value": "savings"}]), "not json"])
    found = add_known_values([], gazetteer, "move it to Savings now")
    assert found == [{"entity": "account", "value": "Savings", "role": None, "group": None}]
    assert add_known_values([], gazetteer, "savingsbook") == []


def test_finish_cuts_at_stop_sequences_and_max_tokens():
    generation = Generation(
        tokens=[" balance", " END"], logprobs=[-0.1, 0.0], top=[[(" balance", -0.1)], [(" END", 0.0)]]
    )
    stopped, reason = cut_generation(generation, [" END"], 16)
    assert (stopped.text, reason, stopped.logprobs) == (" balance", "stop", [-0.1])
    cut, reason = cut_generation(generation, [], 1)
    assert (cut.text, reason) == (" balance", "length")
    partial, _ = cut_generation(Generation(["Hello wor", "ld"], [0.0, 0.0], [[], []]), ["wor"], None)
    assert partial.text == "Hello "


def test_ids_are_validated_before_they_touch_the_disk():
    assert ids.is_object_id(ids.new_id("file"), "file")
    for bad in ("file-../x", "file-", "ftjob-abc", "file-a b", "../file-abc"):
        assert not ids.is_object_id(bad, "file")
    model = ids.new_model_id("gpt-4o-mini-2024-07-18", "my bot/..")
    assert model.startswith("ft:gpt-4o-mini-2024-07-18:local:my-bot-..:")
    assert ids.model_key(model) == model.rsplit(":", 1)[1]
    assert ids.model_key("ft:x:y:z:../../etc") is None and ids.model_key("gpt-4o") is None


def test_entity_model_through_the_api(local_backend):
    data = [
        ("send 50 dollars to Anna", [("amount", "50"), ("person", "Anna")]),
        ("transfer 100 euros to John please", [("amount", "100"), ("person", "John")]),
        ("move 30 dollars to savings", [("amount", "30"), ("account", "savings")]),
        ("show my checking balance", [("account", "checking")]),
        ("pay my rent", []),
        ("what is my balance", []),
        ("hi", []),
        ("bye", []),
        ("transfer money", []),
        ("I want to pay 20 dollars to Mary", [("amount", "20"), ("person", "Mary")]),
    ]
    records = [
        prompts.entities_record(text, [{"entity": e, "value": v} for e, v in ents], "chat") for text, ents in data
    ]
    job = local_backend.fine_tune(records, metadata={"task": "entities"})
    assert job.status == "succeeded", job.error

    def extract(text):
        answer = local_backend.client.chat.completions.create(
            model=job.fine_tuned_model, **prompts.entities_request(text, "chat")
        )
        return [(e["entity"], e["value"]) for e in prompts.parse_entities(answer.choices[0].message.content)]

    assert extract("send 75 dollars to Bob") == [("amount", "75"), ("person", "Bob")]
    assert extract("what is in my checking account") == [("account", "checking")]
    assert extract("quantum chromodynamics lecture") == []


def test_unknown_text_of_a_response_model_comes_from_the_environment(local_backend, monkeypatch):
    records = [
        prompts.response_record(
            [prompts.Turn("user", f"what are your opening hours on day {i}")], "We are open 9 to 5.", "chat"
        )
        for i in range(10)
    ]
    records += [prompts.response_record([prompts.Turn("user", "hello")], "Hi! How can I help?", "chat")]
    job = local_backend.fine_tune(records, metadata={"task": "response"})
    monkeypatch.setenv("RASA_GPT3_UNKNOWN_TEXT", "Let me get a human.")
    history = [prompts.Turn("user", "Quarterly volcanic ash dispersion models")]
    answer = local_backend.client.chat.completions.create(
        model=job.fine_tuned_model, **prompts.response_request(history, "chat")
    )
    assert answer.choices[0].message.content == "Let me get a human."
    known = local_backend.client.chat.completions.create(
        model=job.fine_tuned_model, **prompts.response_request([prompts.Turn("user", "when are you open?")], "chat")
    )
    assert known.choices[0].message.content == "We are open 9 to 5."
