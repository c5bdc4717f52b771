"""`action_gpt3_fallback`: what a bot does with a message its NLU pipeline was unsure about.

```yaml
# data/rules.yml
- rule: low NLU confidence -> GPT fallback
  steps:
  - intent: nlu_fallback
  - action: action_gpt3_fallback
```

```python
# actions/actions.py (served by `rasa run actions`)
from rasa_gpt3.actions import ActionGPT3Fallback  # noqa: F401
```

Two things it can do, in this order (each can be switched off):

1. **Re-classify.** When the fine-tuned intent model was not asked in NLU (a DIET-only pipeline; routing mode
   skipped it because the earlier classifier looked confident; or its call failed), the action asks it about the
   latest user message. When the top intent is one the domain knows and its confidence is at least
   `reclassify_threshold`, the action reverts the fallback (`UserUtteranceReverted`) and re-injects the message
   (`ActionExecuted(action_listen)` + `UserUttered` with the new intent, its ranking and entities), exactly as
   Rasa's own two-stage fallback does. Rasa then runs `action_extract_slots` and the bot's rules and stories
   carry on as if NLU had got it right. Entities: those NLU found, plus, when the pipeline has no
   GPT3EntityExtractor, those of the fine-tuned entities model, mapped through the training data's synonyms.
   A retrieval intent (`faq/ask_x`) also sets the response selector's choice, so `utter_faq` answers it.
2. **Generate.** Otherwise the fine-tuned `response` model gets the last `history` turns of the conversation,
   rendered by `rasa_gpt3.prompts.response_request` (the same as the `response` export), and its answer is sent;
   the slot `answer_slot` (default `gpt3_answer`, if the domain has it) is set to it.

Guardrails: a message longer than `max_message_chars` is never sent (the action answers with the failure response,
reason `too_long`, and leaves such turns out of the history it sends); `max_tokens`, the format's stop sequences
plus `stop`, a `timeout` per call (the process-wide `rasa_gpt3.inference` caller: one quick retry, circuit
breaker, cache); `{slot}` templates in an answer are filled
from the tracker, and an answer naming an unset or unknown slot is refused; an answer matching one of
`forbidden_patterns` (regular expressions) is refused. On any failure or refusal the action sends
`failure_response` (default `utter_default`; a fixed sentence if the domain lacks it). The user always gets a
reply and the action server never crashes. Failures are logged once, without the user's text or the API key.

Configuration (all optional): `gpt3_fallback.yml` in the bot project (`fallback_config`). Model ids: the file's,
else the environment's, else the project's registry (`models`). The API key and base URL come from the environment
only (see `rasa_gpt3.settings`); no key is ever read from a file.

Every decision is recorded for the transcript (the demo reads it from the tracker): a re-injected message carries
`parse_data["gpt3_fallback"]` (`reclassified`, `model`, `confidence`, `previous_intent`); a bot message the action
sent carries `metadata["rasa_gpt3"]` (`source`: `generated` or `failure`, and the reason).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
from typing import Any, Dict, List, Optional, Sequence

from rasa_sdk import Action, Tracker
from rasa_sdk.events import ActionExecuted, SlotSet, UserUtteranceReverted, UserUttered
from rasa_sdk.executor import CollectingDispatcher

from rasa_gpt3 import prompts
from rasa_gpt3.actions.fallback_config import FallbackConfig, FallbackConfigError, load_fallback_config, project_dir
from rasa_gpt3.actions.models import ModelLoader, ServingModels
from rasa_gpt3.errors import CallFailed, first_line
from rasa_gpt3.inference.calls import check_message_length
from rasa_gpt3.inference.entities import extract_entities_async
from rasa_gpt3.inference.intents import classify_async
from rasa_gpt3.intent_names import is_retrieval_intent, is_shortcut
from rasa_gpt3.outcomes import Outcome

logger = logging.getLogger(__name__)

ACTION_NAME = "action_gpt3_fallback"
# sent when even the failure response is missing from the domain
LAST_RESORT_TEXT = "Sorry, I can't answer that right now."
SLOT_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


# ---------------------------------------------------------------- pure parts (unit-tested without a server)


def should_reclassify(parse_data: Dict[str, Any]) -> bool:
    """Whether the intent model should be asked: the NLU pipeline did not ask it, or its call failed."""
    record = parse_data.get("gpt3")
    if not isinstance(record, dict) or not record.get("asked"):
        return True
    return not _answered(record.get("outcome"))


def _answered(outcome: Any) -> bool:
    """Whether a recorded outcome says the model's answer came back (so asking it again would not help)."""
    try:
        return Outcome(outcome).answered
    except ValueError:
        return False


def conversation_turns(
    events: Sequence[Dict[str, Any]], history: int, max_chars: Optional[int] = None
) -> List[prompts.Turn]:
    """The last `history` user and bot turns with text (the latest user message last) from applied tracker events.

    A turn longer than `max_chars` is left out: no request carries a message over the length limit.
    """
    turns: List[prompts.Turn] = []
    for event in events:
        kind = event.get("event")
        text = event.get("text")
        if kind in ("user", "bot") and isinstance(text, str) and text.strip():
            if max_chars is None or len(text) <= max_chars:
                turns.append(prompts.Turn("user" if kind == "user" else "bot", text))
    return turns[-history:]


def response_body(turns: Sequence[prompts.Turn], fmt: str, config: FallbackConfig) -> Dict[str, Any]:
    """The generation request: the history rendered by `prompts`, max tokens, temperature, stop sequences."""
    body = dict(prompts.response_request(turns, fmt))
    body["max_tokens"] = config.max_tokens
    body["temperature"] = config.temperature
    stop = list(prompts.stop_sequences(fmt) or []) + list(config.stop)
    if stop:
        body["stop"] = stop
    return body


class Refused(Exception):
    """A generated answer the guardrails do not let through; the message says why (without the answer)."""


def guard_answer(raw: str, fmt: str, slots: Dict[str, Any], config: FallbackConfig) -> str:
    """The answer to send: cleaned, `{slot}` templates filled from `slots`; raises Refused."""
    answer = prompts.clean_completion(raw) if fmt == "completion" else (raw or "").strip()
    if not answer:
        raise Refused("empty answer")
    for pattern in config.forbidden:
        if pattern.search(answer):
            raise Refused(f"answer matches the forbidden pattern {pattern.pattern!r}")

    def fill(match: re.Match[str]) -> str:
        value = slots.get(match.group(1))
        if value is None or value == "" or isinstance(value, (list, dict)):
            raise Refused(f"answer needs slot '{match.group(1)}', which is not set")
        return str(value)

    filled = SLOT_TEMPLATE.sub(fill, answer)
    # a filled-in slot value must not smuggle a forbidden text in either
    for pattern in config.forbidden:
        if pattern.search(filled):
            raise Refused(f"filled answer matches the forbidden pattern {pattern.pattern!r}")
    return filled


def domain_intents(domain: Dict[str, Any]) -> List[str]:
    """The intent names of a domain dict as rasa-sdk passes it (entries are names or {name: properties})."""
    names = []
    for item in domain.get("intents") or []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict):
            names.extend(str(key) for key in item)
    return names


def merge_entities(
    nlu_entities: Sequence[Dict[str, Any]], model_entities: Sequence[Dict[str, Any]], synonyms: Dict[str, str]
) -> List[Dict[str, Any]]:
    """NLU's entities plus the model's that do not overlap them, the latter mapped through the synonyms."""
    merged = [dict(entity) for entity in nlu_entities]
    taken = [(e.get("start"), e.get("end")) for e in merged if e.get("start") is not None and e.get("end") is not None]
    for entity in model_entities:
        start, end = entity.get("start"), entity.get("end")
        if any(start < other_end and other_start < end for other_start, other_end in taken):
            continue
        entity = dict(entity, extractor=ACTION_NAME)
        mapped = synonyms.get(str(entity.get("value")).lower())
        if mapped is not None and mapped != entity.get("value"):
            entity["value"] = mapped
            entity["processors"] = ["EntitySynonymMapper"]
        merged.append(entity)
        taken.append((start, end))
    return sorted(merged, key=lambda e: (e.get("start") or 0, e.get("end") or 0))


def reinjected_parse_data(
    latest: Dict[str, Any], prediction: Any, entities: List[Dict[str, Any]], domain: Dict[str, Any]
) -> Dict[str, Any]:
    """The parse data of the re-injected message: the model's intent and ranking, entities, the record of why."""
    replaced = ("intent", "entities", "intent_ranking")
    parse_data = {key: copy.deepcopy(value) for key, value in latest.items() if key not in replaced}
    intent: Dict[str, Any] = {"name": prediction.intent, "confidence": float(prediction.confidence)}
    full = prediction.full_intent
    if is_retrieval_intent(full):
        intent["full_retrieval_intent_name"] = full
        _select_retrieval_response(parse_data, prediction.intent, full, domain)
    parse_data["intent"] = intent
    parse_data["intent_ranking"] = copy.deepcopy(prediction.ranking)
    parse_data["entities"] = entities
    parse_data["gpt3_fallback"] = {
        "reclassified": True,
        "model": prediction.model,
        "intent": prediction.intent,
        "confidence": float(prediction.confidence),
        "previous_intent": copy.deepcopy(latest.get("intent")),
        "cached": bool(prediction.cached),
    }
    return parse_data


def _select_retrieval_response(parse_data: Dict[str, Any], base: str, full: str, domain: Dict[str, Any]) -> None:
    """Points the response selector's choice for `base` at `full`, so `utter_<base>` answers the model's intent."""
    utter_action = f"utter_{full}"
    responses = (domain.get("responses") or {}).get(utter_action)
    if not responses:
        return
    selector = parse_data.setdefault("response_selector", {})
    entry = selector.setdefault(base, {})
    entry["response"] = {
        "id": None,
        "responses": copy.deepcopy(responses),
        "response_templates": copy.deepcopy(responses),
        "confidence": 1.0,
        "intent_response_key": full,
        "utter_action": utter_action,
        "template_name": utter_action,
    }
    entry["ranking"] = [{"id": None, "confidence": 1.0, "intent_response_key": full}]


# ---------------------------------------------------------------- the action


class ActionGPT3Fallback(Action):
    """Re-classifies the message NLU was unsure about (so the stories go on), or answers it with the response model."""

    def __init__(self) -> None:
        """Reads the configuration and starts loading the project's models in the background."""
        super().__init__()
        self.project = project_dir()
        self.config_error: Optional[str] = None
        try:
            self.config = load_fallback_config(self.project)
        except FallbackConfigError as error:
            # a broken config must not stop the action server: the action answers with utter_default and says why
            self.config_error = str(error)
            self.config = FallbackConfig()
            logger.error("action_gpt3_fallback is disabled: %s", error)
        self.loader = ModelLoader(self.project, self.config)
        if self.config_error is None:
            self.loader.start_background()

    def name(self) -> str:
        """`action_gpt3_fallback`."""
        return ACTION_NAME

    async def run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[str, Any]
    ) -> List[Dict[str, Any]]:
        """Re-injects the re-classified message, or sends a generated answer, or the failure response."""
        try:
            return await self._run(dispatcher, tracker, domain)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the user always gets an answer, the action server never crashes
            logger.warning("action_gpt3_fallback failed (%s): %s", type(error).__name__, first_line(error)[:200])
            return self._fail(dispatcher, domain, "error")

    async def _run(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[str, Any]
    ) -> List[Dict[str, Any]]:
        if self.config_error is not None:
            return self._fail(dispatcher, domain, "config_error")
        latest = dict(tracker.latest_message or {})
        text = latest.get("text") or ""
        if not text.strip() or is_shortcut(text):
            return self._fail(dispatcher, domain, "no_text")
        try:
            check_message_length(text, self.config.max_message_chars)
        except CallFailed as too_long:
            logger.info("action_gpt3_fallback: %s", too_long.reason)
            return self._fail(dispatcher, domain, too_long.kind)
        loop = asyncio.get_running_loop()
        try:
            models = await asyncio.wait_for(loop.run_in_executor(None, self.loader.models), self.config.load_timeout)
        except asyncio.TimeoutError:
            logger.warning("action_gpt3_fallback: the models were not loaded within %g s", self.config.load_timeout)
            return self._fail(dispatcher, domain, "loading")

        if self.config.reclassify and models.intent is not None and should_reclassify(latest):
            events = await self._reclassify(text, latest, models, domain)
            if events:
                return events
        if self.config.generate and models.response is not None:
            return await self._generate(dispatcher, tracker, domain, models)
        return self._fail(dispatcher, domain, "no_model")

    async def _reclassify(
        self, text: str, latest: Dict[str, Any], models: ServingModels, domain: Dict[str, Any]
    ) -> Optional[List[Dict[str, Any]]]:
        prediction = await classify_async(text, models.intent, models.caller)
        known = set(domain_intents(domain)) - set(self.config.ignore_intents)
        if not prediction.decided or prediction.intent not in known:
            return None
        if prediction.confidence < self.config.reclassify_threshold:
            return None
        model_entities: List[Dict[str, Any]] = []
        pipeline_asked = isinstance(latest.get("gpt3_entities"), dict) and latest["gpt3_entities"].get("asked")
        if models.entities is not None and not pipeline_asked:
            extraction = await extract_entities_async(text, models.entities, models.caller)
            model_entities = extraction.entities
        entities = merge_entities(latest.get("entities") or [], model_entities, models.synonyms)
        parse_data = reinjected_parse_data(latest, prediction, entities, domain)
        logger.info(
            "action_gpt3_fallback: re-classified the message as %s (%.2f)", prediction.intent, prediction.confidence
        )
        return [
            UserUtteranceReverted(),
            ActionExecuted("action_listen"),
            UserUttered(text, parse_data=parse_data, input_channel=latest.get("input_channel")),
        ]

    async def _generate(
        self, dispatcher: CollectingDispatcher, tracker: Tracker, domain: Dict[str, Any], models: ServingModels
    ) -> List[Dict[str, Any]]:
        model, fmt = models.response
        turns = conversation_turns(tracker.applied_events(), self.config.history, self.config.max_message_chars)
        try:
            completion = await models.caller.complete_async(model, response_body(turns, fmt, self.config))
        except CallFailed as failure:
            logger.warning(
                "action_gpt3_fallback: response model %s failed (%s): %s", model, failure.kind, failure.reason
            )
            return self._fail(dispatcher, domain, failure.kind)
        try:
            answer = guard_answer(completion.text, fmt, dict(tracker.slots or {}), self.config)
        except Refused as refusal:
            logger.info("action_gpt3_fallback: answer of %s refused: %s", model, refusal)
            return self._fail(dispatcher, domain, "refused")
        marker = {"source": "generated", "model": model, "cached": completion.cached}
        dispatcher.utter_message(text=answer, rasa_gpt3=marker)
        slot = self.config.answer_slot
        if slot and slot in (domain.get("slots") or {}):
            return [SlotSet(slot, answer)]
        return []

    def _fail(self, dispatcher: CollectingDispatcher, domain: Dict[str, Any], reason: str) -> List[Dict[str, Any]]:
        """Sends the failure response (or a fixed sentence when the domain lacks it)."""
        marker = {"source": "failure", "reason": reason}
        response = self.config.failure_response
        if response in (domain.get("responses") or {}):
            dispatcher.utter_message(response=response, rasa_gpt3=marker)
        else:
            dispatcher.utter_message(text=LAST_RESORT_TEXT, rasa_gpt3=marker)
        return []
