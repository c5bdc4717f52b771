"""The engine seam: a second engine, added the way engines.py describes, trains jobs and serves completions."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import openai
import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.data.base_models import BaseModel
from rasa_gpt3.local import engine_registry, standin
from rasa_gpt3.local.engines import EngineKind, Generation, Prompt, TrainedModel, TrainingRun

WORDS_BASE = "words-base-1"


class WordsEngine:
    """Answers a user text with the answer it was trained on for it, one word per token; stops itself at max_tokens."""

    format = "chat"
    context_length = 4096

    def __init__(self, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
        self.answers = dict(zip(meta["texts"], meta["answers"]))
        self.confidence = float(arrays["confidence"][0])

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self,
        prompt: Prompt,
        *,
        max_tokens: Optional[int],
        stops: Sequence[str],
        temperature: Optional[float],
        seed: Optional[int],
        top_logprobs: int,
    ) -> Generation:
        user_text = [m["content"] for m in prompt if m["role"] == "user"][-1]
        words = self.answers.get(user_text, "no idea").split(" ")
        tokens = [words[0]] + [" " + word for word in words[1:]]
        reason = "stop"
        if max_tokens is not None and len(tokens) > max_tokens:
            tokens, reason = tokens[:max_tokens], "length"
        logprob = float(np.log(self.confidence))
        return Generation(
            tokens=tokens, logprobs=[logprob] * len(tokens), top=[[(t, logprob)] for t in tokens], finish_reason=reason
        )


def _describe(name: str) -> BaseModel:
    if not name.startswith("words-base"):
        raise ValueError(f"the words engine does not fine-tune '{name}'")
    return BaseModel(
        name=name,
        format="chat",
        encoding="o200k_base",
        context=4096,
        training_price=0.0,
        input_price=0.0,
        output_price=0.0,
    )


def _train(run: TrainingRun) -> TrainedModel:
    users = [[m["content"] for m in r["messages"] if m["role"] == "user"][-1] for r in run.train_records]
    answers = [prompts.record_answer(r) for r in run.train_records]
    run.events.message(f"Memorising {len(users)} answers")
    for epoch in range(1, run.hyperparameters.n_epochs + 1):
        if run.cancelled():
            raise AssertionError("nobody cancelled this job")
        run.events.step(
            {
                "step": epoch,
                "total_steps": run.hyperparameters.n_epochs,
                "epoch": epoch,
                "train_loss": 1.0 / epoch,
                "train_mean_token_accuracy": 1.0,
            }
        )
        run.events.checkpoint({"step": epoch, "epoch": epoch, "total_steps": run.hyperparameters.n_epochs})
    return TrainedModel(
        meta={"format": run.base_model.format, "texts": users, "answers": answers},
        arrays={"confidence": np.array([0.5])},
    )


WORDS = EngineKind(name="words", describe=_describe, train=_train, load=WordsEngine)


@pytest.fixture
def two_engines(monkeypatch):
    monkeypatch.setattr(engine_registry, "ENGINES", (WORDS, standin.ENGINE))


def _response_records() -> List[Dict[str, Any]]:
    return [
        prompts.response_record([prompts.Turn("user", f"question number {i}")], f"Answer {i} is here.", "chat")
        for i in range(12)
    ]


def test_jobs_and_stored_models_go_to_the_engine_for_their_base_model():
    assert engine_registry.engine_for_base_model("gpt-4o-mini")[0] is standin.ENGINE
    assert engine_registry.engine_for_base_model("babbage-002")[1].format == "completion"
    with pytest.raises(ValueError, match="unknown base model 'no-such-model'"):
        engine_registry.engine_for_base_model("no-such-model")  # neither the stand-in's nor an open-weights name
    assert engine_registry.engine_of_model({"id": "ft:x"}) is standin.ENGINE  # stored before engines had names
    with pytest.raises(ValueError, match="needs the engine 'gone'"):
        engine_registry.engine_of_model({"id": "ft:x", "engine": "gone"})


def test_a_second_engine_trains_and_serves_through_the_seam(local_backend, two_engines):
    job = local_backend.fine_tune(_response_records(), model=WORDS_BASE, hyperparameters={"n_epochs": 2})
    assert job.status == "succeeded", job.error
    assert job.model == WORDS_BASE and job.fine_tuned_model.startswith(f"ft:{WORDS_BASE}:local:")
    events = [e.message for e in local_backend.client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Memorising 12 answers" in events and any(m.startswith("Step 2/2: training loss=0.5000") for m in events)
    checkpoints = local_backend.client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [1, 2]
    key = job.fine_tuned_model.rsplit(":", 1)[1]
    assert json.loads((local_backend.state_dir / "models" / f"{key}.json").read_text())["engine"] == "words"

    def ask(**options):
        return local_backend.client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "question number 7"}], **options
        )

    whole = ask(logprobs=True, top_logprobs=1)
    assert whole.choices[0].message.content == "Answer 7 is here." and whole.choices[0].finish_reason == "stop"
    assert [t.token for t in whole.choices[0].logprobs.content] == ["Answer", " 7", " is", " here."]
    assert whole.choices[0].logprobs.content[0].logprob == pytest.approx(np.log(0.5))
    assert whole.usage.completion_tokens == 4  # counted by the engine's own tokenizer
    stopped_by_engine = ask(max_tokens=2)
    assert (stopped_by_engine.choices[0].message.content, stopped_by_engine.choices[0].finish_reason) == (
        "Answer 7",
        "length",
    )
    cut_at_stop = ask(stop=[" is"])
    assert (cut_at_stop.choices[0].message.content, cut_at_stop.choices[0].finish_reason) == ("Answer 7", "stop")
    with pytest.raises(openai.NotFoundError, match="not supported in the v1/completions endpoint"):
        local_backend.client.completions.create(model=job.fine_tuned_model, prompt="question number 7")


def test_the_stand_in_still_trains_beside_another_engine_and_a_model_of_a_missing_engine_is_refused(
    local_backend, two_engines, intent_records
):
    job = local_backend.fine_tune(intent_records("chat"), metadata={"task": "intent"})
    assert job.status == "succeeded", job.error
    meta_path = local_backend.state_dir / "models" / (job.fine_tuned_model.rsplit(":", 1)[1] + ".json")
    meta = json.loads(meta_path.read_text())
    assert meta["engine"] == "standin"
    request = dict(model=job.fine_tuned_model, **prompts.intent_request("what is my balance", "chat"))
    assert local_backend.client.chat.completions.create(**request).choices[0].message.content == "check_balance"
    meta_path.write_text(json.dumps({**meta, "engine": "gone"}))
    with pytest.raises(openai.BadRequestError, match="needs the engine 'gone'") as refused:
        local_backend.client.chat.completions.create(**request)
    assert refused.value.code == "model_not_supported"
