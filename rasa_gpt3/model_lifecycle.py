"""When a model in use shuts down: its date (the backend's answer first, then the schedule), days left, one line.

A provider retires a base model and every model fine-tuned on it on its shutdown date; requests fail from that day
on. The date comes from, in this order: the backend's `shutdown_date` (OpenAI's optional field of GET /v1/models,
"YYYY-MM-DD"; null or missing means the backend announces none), then RASA_GPT3_SHUTDOWN_DATES, then — on a remote
backend only — the provider's schedule in base_models.yml. The embedded local backend's models are retired by no
provider, so for them only the backend's answer and the environment count.

Within WARNING_DAYS of the date a model is `due_soon` and its `warning` is one line naming the commands that help;
from the date on it is `retired` and its `error` is one line. The NLU components, the action server and
`rasa-gpt3 models` show these lines; none of this ever raises for a backend that does not answer.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from typing import Any, List, Optional

from rasa_gpt3.data.base_models import (
    ENV_SHUTDOWN_DATES,
    base_model_name,
    resolve_base_model,
    shutdown_date,
    shutdown_overrides,
)
from rasa_gpt3.settings import LOCAL_BACKEND

logger = logging.getLogger(__name__)

# a model this close to its shutdown gets a warning at every start-up
WARNING_DAYS = 60
FROM_BACKEND = "the backend's GET /v1/models"
# seconds for the one GET /v1/models/{id} a start-up spends on this
LOOKUP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ModelLifecycle:
    """A model in use on a backend, the day it shuts down (None: none announced) and who said so."""

    model: str
    backend: str
    base_model: str
    shutdown: Optional[_dt.date]
    source: Optional[str]
    today: _dt.date

    @property
    def days_left(self) -> Optional[int]:
        """Days until the shutdown date (0 on the day, negative after it); None when no date is announced."""
        return None if self.shutdown is None else (self.shutdown - self.today).days

    @property
    def retired(self) -> bool:
        """Whether the model no longer answers: its shutdown date has come."""
        return self.days_left is not None and self.days_left <= 0

    @property
    def due_soon(self) -> bool:
        """Whether the model shuts down within WARNING_DAYS (and has not yet)."""
        return self.days_left is not None and 0 < self.days_left <= WARNING_DAYS

    def days_text(self) -> str:
        """What a table shows: `45`, `shut down`, or `-` when no date is announced."""
        if self.days_left is None:
            return "-"
        return "shut down" if self.retired else str(self.days_left)

    def _remedy(self, task: str) -> str:
        return (
            f"fine-tune a replacement (`rasa-gpt3 fine-tune --task {task} --base-model BASE`, BASE another base "
            f"model or the local backend's open-weights `hf:ORG/NAME`) and compare "
            f"(`rasa-gpt3 evaluate --models {self.model},NEW`)"
        )

    def warning(self, task: str) -> Optional[str]:
        """The one warning line while the model is due soon, else None."""
        if not self.due_soon:
            return None
        return (
            f"the {task} model {self.model} on {self.backend} shuts down on {self.shutdown.isoformat()} "
            f"({self.days_left} day{'s' if self.days_left != 1 else ''} left, per {self.source}): {self._remedy(task)}"
        )

    def error(self, task: str, consequence: str = "it is no longer asked") -> Optional[str]:
        """The one error line once the model is retired, else None; `consequence` says what happens instead."""
        if not self.retired:
            return None
        return (
            f"the {task} model {self.model} on {self.backend} shut down on {self.shutdown.isoformat()} "
            f"(per {self.source}); {consequence}. {self._remedy(task)[0].upper()}{self._remedy(task)[1:]}, then "
            f"`rasa-gpt3 models use NEW --task {task}`"
        )

    def log(self, task: str, consequence: str = "it is no longer asked", log: Optional[logging.Logger] = None) -> None:
        """Logs the warning or the error line, if any (one line)."""
        log = log or logger
        if self.retired:
            log.error(self.error(task, consequence))
        elif self.due_soon:
            log.warning(self.warning(task))


def parse_shutdown_date(value: Any) -> Optional[_dt.date]:
    """OpenAI's `shutdown_date` ("YYYY-MM-DD", a date or a Unix timestamp) as a date; None if absent or unreadable."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).date()
    try:
        return _dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def backend_shutdown_date(client: Any, model: str) -> Optional[_dt.date]:
    """The `shutdown_date` the backend announces for `model` (GET /v1/models/{id}); None when none or unreachable."""
    import openai

    try:
        answer = client.models.retrieve(model, timeout=LOOKUP_TIMEOUT)
    except openai.OpenAIError as error:
        logger.debug("no shutdown date from the backend for %s: %s", model, type(error).__name__)
        return None
    return parse_shutdown_date(getattr(answer, "shutdown_date", None))


def model_lifecycle(
    model: str,
    backend: str,
    *,
    client: Any = None,
    base_model: Optional[str] = None,
    today: Optional[_dt.date] = None,
) -> ModelLifecycle:
    """The lifecycle of `model` on `backend`, asking the backend through `client` (an openai.OpenAI) when given.

    Raises RasaGPT3Error only when RASA_GPT3_SHUTDOWN_DATES is malformed.
    """
    base = base_model_name(base_model or model)
    try:
        base = resolve_base_model(base).name
    except ValueError:
        pass  # a base model the table does not know (an open-weights model): its name as it is
    today = today or _dt.date.today()
    announced = backend_shutdown_date(client, model) if client is not None else None
    if announced is not None:
        return ModelLifecycle(model, backend, base, announced, FROM_BACKEND, today)
    remote = backend != LOCAL_BACKEND
    day = shutdown_date(base, provider_schedule=remote)
    if day is None:
        return ModelLifecycle(model, backend, base, None, None, today)
    if base in shutdown_overrides():
        source = ENV_SHUTDOWN_DATES
    else:
        source = resolve_base_model(base).shutdown_source or "base_models.yml"
    return ModelLifecycle(model, backend, base, day, source, today)


def lifecycle_on(settings: Any, model: str, base_model: Optional[str] = None) -> ModelLifecycle:
    """The lifecycle of `model` on the backend of `settings`, asking that backend (one GET, no retry).

    A backend that cannot be reached leaves the schedule to decide; raises RasaGPT3Error only when
    RASA_GPT3_SHUTDOWN_DATES is malformed.
    """
    from rasa_gpt3.client import make_client
    from rasa_gpt3.errors import RasaGPT3Error

    try:
        client = make_client(settings, timeout=LOOKUP_TIMEOUT, max_retries=0)
    except RasaGPT3Error as error:  # the local backend could not start: the schedule decides
        logger.debug("no shutdown date from the backend for %s: %s", model, error)
        client = None
    try:
        return model_lifecycle(model, settings.backend_name, client=client, base_model=base_model)
    finally:
        if client is not None:
            client.close()


def schedule_state(base_model: str, backend: str, today: Optional[_dt.date] = None) -> List[Any]:
    """[shutdown date, "soon" | "shut down" | None] from the schedule alone (no request): what retraining hinges on."""
    lifecycle = model_lifecycle(base_model, backend, today=today)
    if lifecycle.shutdown is None:
        return [None, None]
    state = "shut down" if lifecycle.retired else ("soon" if lifecycle.due_soon else None)
    return [lifecycle.shutdown.isoformat(), state]


def fine_tune_refusal(error: BaseException, base_model: str, backend: str) -> Optional[str]:
    """The one line for a provider's refusal to fine-tune, else None.

    A refusal is a 403 at job creation (OpenAI's answer, since 2026-05-07, to organisations without fine-tuning
    access) or a 400 about the model (a base model that can no longer be fine-tuned).
    """
    from rasa_gpt3.client import classify_api_error

    failure = classify_api_error(error)
    about_model = getattr(error, "code", None) == "model_not_available" or getattr(error, "param", None) == "model"
    if failure.forbidden:
        what = f"{backend} refuses to fine-tune for this organisation"
    elif failure.status == 400 and about_model:
        what = f"{backend} no longer fine-tunes {base_model}"
    else:
        return None
    return (
        f"{what} ({failure.message}); nothing was registered. Alternatives: another base model (`--base-model "
        "NAME`), or the local backend's open-weights path (`RASA_GPT3_LOCAL=1 rasa-gpt3 fine-tune --base-model "
        "hf:ORG/NAME`, or a model directory)"
    )
