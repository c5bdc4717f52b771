"""The fine-tuned side: export the k-shot data, fine-tune (or reuse) a model on it, and ask it about each message."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

from rasa_gpt3.errors import BackendError
from rasa_gpt3.evaluation.baseline import FallbackRule
from rasa_gpt3.evaluation.results import Prediction
from rasa_gpt3.intent_names import FALLBACK_INTENT
from rasa_gpt3.outcomes import Outcome

MAX_FAILURES_IN_A_ROW = 5


@dataclass
class FineTunedModel:
    """A fine-tuned model ready to be asked, and what it cost to get it."""

    model: str
    intent_model: Any  # rasa_gpt3.inference.IntentModel
    job_id: Optional[str]
    reused: bool
    trained_tokens: int
    training_usd: float
    seconds: float


class FineTunedSide:
    """Exports the k-shot data, fine-tunes (or reuses) a model on it, and asks it about each test message."""

    def __init__(
        self,
        settings: Any,
        project_name: str,
        base_model: Optional[str],
        fmt: Optional[str],
        epochs: Optional[int],
        fallback: Optional[FallbackRule],
    ):
        from rasa_gpt3.inference.calls import BoundedCaller, CallPolicy

        self.settings = settings
        self.project_name = project_name
        self.base_model = base_model
        self.fmt = fmt
        self.epochs = epochs
        self.fallback = fallback
        # a request's own timeout rather than the component's 2 s budget, so latency is measured, not cut off; no
        # cache (every message is a real call) and no breaker (five failures in a row stop the evaluation instead)
        policy = CallPolicy(timeout=settings.timeout, cache_size=0, breaker_failures=10**9)
        self.caller = BoundedCaller(settings, policy)

    def export(self, train_data: Any, seed: int) -> Any:
        """The intent fine-tune records of `train_data`, all for training (ExportedTask)."""
        from rasa_gpt3.data.export import export_task

        return export_task(
            "intent", train_data, fmt=self.fmt, base_model=self.base_model, valid_fraction=0.0, seed=seed
        )

    def estimate(self, exported: Any, test_texts: Sequence[str]) -> Tuple[float, float]:
        """(training USD, serving USD for classifying `test_texts`) at the base model's prices."""
        from rasa_gpt3.finetune import estimate_cost

        training = estimate_cost(exported.train, exported.base_model, self.epochs).usd
        prompt_tokens = sum(self._request_tokens(exported, test_texts))
        serving = exported.base_model.usage_cost(prompt_tokens, len(test_texts))
        return training, serving

    def train(self, exported: Any, seed: int) -> FineTunedModel:
        """Fine-tunes on `exported` (or reuses the identical model) and returns it; raises BackendError/BudgetError."""
        from rasa_gpt3.finetune import default_suffix, ensure_fine_tuned

        started = time.perf_counter()
        outcome = ensure_fine_tuned(
            self.settings,
            exported,
            project_name=self.project_name,
            epochs=self.epochs,
            seed=seed,
            suffix=default_suffix(f"eval-{self.project_name}"),
        )
        return FineTunedModel(
            model=outcome.model,
            intent_model=self._intent_model(outcome.model, exported),
            job_id=outcome.job_id,
            reused=outcome.reused,
            trained_tokens=outcome.estimate.trained_tokens,
            training_usd=outcome.estimate.usd,
            seconds=time.perf_counter() - started,
        )

    def existing(self, model: str, exported: Any) -> FineTunedModel:
        """A model that already exists, read with the label codec of `exported` (nothing is trained or spent)."""
        started = time.perf_counter()
        intent_model = self._intent_model(model, exported)
        return FineTunedModel(
            model=model,
            intent_model=intent_model,
            job_id=None,
            reused=True,
            trained_tokens=0,
            training_usd=0.0,
            seconds=time.perf_counter() - started,
        )

    def _intent_model(self, model: str, exported: Any) -> Any:
        """The serving description of `model` with `exported`'s codec, warmed up on the local backend."""
        from rasa_gpt3.inference.intents import IntentModel
        from rasa_gpt3.nlu.task_model import TaskModel

        task_model = TaskModel.from_export(exported, model, self.settings.backend_name)
        intent_model = IntentModel.from_task_model(task_model, fallback_intent=FALLBACK_INTENT)
        if self.settings.uses_local_backend:
            # the local backend loads a model on its first request; that is not a serving latency
            self.caller.warm_up(model, intent_model.request_body("hello"))
        return intent_model

    def _request_tokens(self, exported: Any, texts: Sequence[str]) -> List[int]:
        from rasa_gpt3 import prompts
        from rasa_gpt3.data.tokens import count_record_tokens, get_encoding

        requests = [prompts.intent_request(text, exported.fmt) for text in texts]
        return count_record_tokens(requests, get_encoding(exported.base_model.encoding))

    def predict(self, model: FineTunedModel, exported: Any, examples: Sequence[Any], bar: Any) -> List[Prediction]:
        """Classifies every test message with one bounded call each and times each call."""
        from rasa_gpt3.inference.intents import classify

        texts = [example.get("text") for example in examples]
        counted = self._request_tokens(exported, texts)
        predictions: List[Prediction] = []
        failures_in_a_row = 0
        for example, text, tokens in zip(examples, texts, counted):
            started = time.perf_counter()
            result = classify(text, model.intent_model, self.caller)
            elapsed = (time.perf_counter() - started) * 1000
            failed = not Outcome(result.outcome).answered
            failures_in_a_row = failures_in_a_row + 1 if failed else 0
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise BackendError(
                    f"{MAX_FAILURES_IN_A_ROW} calls to {model.model} failed in a row "
                    f"({result.outcome}: {result.error}); evaluation stopped"
                )
            falls_back = (not result.decided) or bool(
                self.fallback and self.fallback.applies(result.confidence, result.ranking)
            )
            predictions.append(
                Prediction(
                    text=text,
                    intent=example.get("intent"),
                    predicted=str(result.intent),
                    confidence=float(result.confidence),
                    latency_ms=elapsed,
                    fallback=falls_back,
                    outcome=result.outcome,
                    # the API's usage; counted here only for a server that reports none
                    prompt_tokens=0 if failed else (result.prompt_tokens or tokens),
                    completion_tokens=0 if failed else (result.completion_tokens or 1),
                )
            )
            bar.update(1)
        return predictions
