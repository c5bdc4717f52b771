"""The baseline side: the bot's own pipeline, trained with Rasa's `train_nlu` and asked through a loaded Rasa model.

Here too: the pruning that makes the pipeline runnable on this machine, and the FallbackClassifier rule by which both
sides are judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence
from urllib.parse import urlparse

from rasa.core.constants import DEFAULT_NLU_FALLBACK_AMBIGUITY_THRESHOLD, DEFAULT_NLU_FALLBACK_THRESHOLD

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.errors import ProjectError
from rasa_gpt3.evaluation.results import Prediction

# ---------------------------------------------------------------------------------------------- fallback rule


@dataclass(frozen=True)
class FallbackRule:
    """When the bot's FallbackClassifier would predict nlu_fallback: its threshold and ambiguity threshold."""

    threshold: float = DEFAULT_NLU_FALLBACK_THRESHOLD
    ambiguity_threshold: float = DEFAULT_NLU_FALLBACK_AMBIGUITY_THRESHOLD

    def applies(self, confidence: float, ranking: Sequence[Dict[str, Any]]) -> bool:
        """Whether the bot would predict nlu_fallback here; Rasa's own FallbackClassifier decides."""
        from rasa.nlu.classifiers.fallback_classifier import (
            AMBIGUITY_THRESHOLD_KEY,
            THRESHOLD_KEY,
            FallbackClassifier,
            is_fallback_classifier_prediction,
        )
        from rasa.shared.nlu.constants import INTENT, INTENT_NAME_KEY, INTENT_RANKING_KEY, PREDICTED_CONFIDENCE_KEY
        from rasa.shared.nlu.training_data.message import Message

        config = {THRESHOLD_KEY: self.threshold, AMBIGUITY_THRESHOLD_KEY: self.ambiguity_threshold}
        # no intent name, so only the classifier can make the prediction nlu_fallback; a copy of the ranking because
        # the classifier puts its fallback intent in front of it
        message = Message(
            {INTENT: {INTENT_NAME_KEY: None, PREDICTED_CONFIDENCE_KEY: confidence}, INTENT_RANKING_KEY: list(ranking)}
        )
        FallbackClassifier(config).process([message])
        return is_fallback_classifier_prediction(message.data)

    @classmethod
    def from_pipeline(cls, pipeline: Sequence[Dict[str, Any]]) -> Optional[FallbackRule]:
        """The rule of the pipeline's FallbackClassifier (Rasa's defaults for missing keys); None without one."""
        from rasa.nlu.classifiers.fallback_classifier import AMBIGUITY_THRESHOLD_KEY, THRESHOLD_KEY

        for component in pipeline or []:
            if isinstance(component, dict) and _short_name(component) == "FallbackClassifier":
                return cls(
                    threshold=float(component.get(THRESHOLD_KEY, DEFAULT_NLU_FALLBACK_THRESHOLD)),
                    ambiguity_threshold=float(
                        component.get(AMBIGUITY_THRESHOLD_KEY, DEFAULT_NLU_FALLBACK_AMBIGUITY_THRESHOLD)
                    ),
                )
        return None


# ---------------------------------------------------------------------------------------------- baseline config


_ENTITY_ONLY = {
    "DucklingEntityExtractor",
    "SpacyEntityExtractor",
    "MitieEntityExtractor",
    "CRFEntityExtractor",
    "RegexEntityExtractor",
    "EntitySynonymMapper",
    "SpacyNLP",
    "MitieNLP",
}
# components that need a Python package Rasa does not install by default
_NEEDS_PACKAGE = {
    "SpacyNLP": "spacy",
    "SpacyTokenizer": "spacy",
    "SpacyFeaturizer": "spacy",
    "SpacyEntityExtractor": "spacy",
    "MitieNLP": "mitie",
    "MitieTokenizer": "mitie",
    "MitieFeaturizer": "mitie",
    "MitieEntityExtractor": "mitie",
    "MitieIntentClassifier": "mitie",
    "JiebaTokenizer": "jieba",
    "LanguageModelFeaturizer": "transformers",
}
# what the report and the errors say when the baseline is not the project's own pipeline, or cannot be trained
CHOOSE_BASELINE = "choose another baseline with --baseline CONFIG.yml (a Rasa 3 NLU pipeline)"
_INTENT_CLASSIFIERS = {
    "DIETClassifier",
    "LogisticRegressionClassifier",
    "SklearnIntentClassifier",
    "KeywordIntentClassifier",
    "MitieIntentClassifier",
}


@dataclass
class BaselineConfig:
    """The pipeline the baseline trains with, where it came from, and what was left out of it and why."""

    config: Dict[str, Any]
    source: str
    dropped: List[Dict[str, str]] = field(default_factory=list)

    def describe(self) -> str:
        """One line: the source, and the dropped components."""
        if not self.dropped:
            return self.source
        names = ", ".join(f"{d['component']} ({d['reason']})" for d in self.dropped)
        return f"{self.source}; left out: {names}"


def _short_name(component: Dict[str, Any]) -> str:
    return str(component.get("name", "")).split(".")[-1]


def _is_rasa_gpt3(component: Dict[str, Any]) -> bool:
    name = str(component.get("name", ""))
    return name.startswith("rasa_gpt3.") or name in ("GPT3IntentClassifier", "GPT3EntityExtractor")


def _package_missing(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is None


def _port_answers(url: str, timeout: float = 0.5) -> bool:
    parsed = urlparse(url if "://" in url else f"http://{url}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def _registered_class(component: Dict[str, Any]) -> Optional[type]:
    """The class Rasa's default recipe trains for `component`, or None when Rasa cannot load it."""
    from rasa.engine.recipes.default_recipe import DefaultV1Recipe

    try:
        return DefaultV1Recipe._from_registry(str(component.get("name"))).clazz
    except Exception:  # Rasa's InvalidConfigException, or whatever importing a custom module raised
        return None


def unavailable_reason(component: Dict[str, Any]) -> Optional[str]:
    """Why a pipeline component cannot run on this machine (missing package, model or server), or None."""
    name = _short_name(component)
    package = _NEEDS_PACKAGE.get(name)
    if package and _package_missing(package):
        return f"{package} is not installed"
    registered = _registered_class(component)
    if registered is None:
        # e.g. Rasa 2's ConveRTTokenizer, which Rasa 3 no longer has
        from rasa.version import __version__ as rasa_version

        return f"Rasa {rasa_version} cannot load it: a Rasa 2 component, or a custom one not importable here"
    if name == "ConveRTFeaturizer":
        # Rasa 3's ConveRTFeaturizer needs a `model_url`: the model's original home is gone
        from rasa.shared.exceptions import RasaException

        try:
            registered._validate_model_url({**registered.get_default_config(), **component})
        except RasaException as error:
            return _first_line(str(error)).split(". ")[0]
    if name == "SpacyNLP" and component.get("model"):
        import spacy  # only reached when spaCy is installed

        if not spacy.util.is_package(str(component["model"])):
            return f"spaCy model {component['model']} is not installed"
    if name == "DucklingEntityExtractor":
        url = component.get("url") or os.environ.get("RASA_DUCKLING_HTTP_URL")
        if not url or not _port_answers(str(url)):
            return f"no Duckling server answers at {url or '(no url)'}"
    return None


def _is_intent_classifier(component: Dict[str, Any]) -> bool:
    name = _short_name(component)
    if name in _INTENT_CLASSIFIERS:
        return True
    if name == "FallbackClassifier" or _is_rasa_gpt3(component):
        return False
    from rasa.nlu.classifiers.classifier import IntentClassifier

    registered = _registered_class(component)
    return registered is not None and issubclass(registered, IntentClassifier)


def rasa_default_config(language: str = "en") -> Dict[str, Any]:
    """Rasa's own default NLU configuration (what `rasa init` and an empty pipeline give), for `language`."""
    import importlib.resources

    import yaml

    text = importlib.resources.files("rasa.engine.recipes").joinpath("config_files", "default_config.yml").read_text()
    config = yaml.safe_load(text)
    return {"recipe": config.get("recipe", "default.v1"), "language": language, "pipeline": config["pipeline"]}


def resolve_baseline(project_config: Optional[Dict[str, Any]], baseline: Optional[Path] = None) -> BaselineConfig:
    """The baseline pipeline: `baseline` if given, else the project's config, pruned as the package docstring says."""
    import yaml

    if baseline is not None:
        try:
            config = yaml.safe_load(Path(baseline).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ProjectError(f"malformed YAML in baseline config '{baseline}'{where}") from None
        if not isinstance(config, dict) or not config.get("pipeline"):
            raise ProjectError(f"baseline config '{baseline}' has no pipeline")
        source = f"--baseline {baseline}"
    else:
        config = dict(project_config or {})
        source = "the project's config.yml"
    language = str(config.get("language") or "en")
    if not config.get("pipeline"):
        return BaselineConfig(
            rasa_default_config(language), "Rasa's default pipeline (the project's config.yml has none)"
        )

    kept: List[Dict[str, Any]] = []
    dropped: List[Dict[str, str]] = []
    blocking: List[str] = []
    for component in config["pipeline"]:
        if not isinstance(component, dict) or not component.get("name"):
            raise ProjectError(f"{source}: every pipeline item needs a name")
        if _is_rasa_gpt3(component):
            dropped.append({"component": _short_name(component), "reason": "it is the fine-tuned side"})
            continue
        reason = unavailable_reason(component)
        if reason is None:
            kept.append(dict(component))
        elif _short_name(component) in _ENTITY_ONLY:
            dropped.append({"component": _short_name(component), "reason": reason})
        else:
            blocking.append(f"{_short_name(component)} ({reason})")
    if baseline is not None and blocking:
        raise ProjectError(f"baseline config '{baseline}' cannot run here: {', '.join(blocking)}")
    if blocking:
        return BaselineConfig(
            rasa_default_config(language),
            "Rasa's default pipeline, because the project's pipeline needs what is missing here: "
            + ", ".join(blocking)
            + f"; {CHOOSE_BASELINE}",
        )
    if not any(_is_intent_classifier(c) for c in kept):
        if baseline is not None:
            raise ProjectError(f"baseline config '{baseline}' has no intent classifier")
        return BaselineConfig(
            rasa_default_config(language),
            "Rasa's default pipeline, because the project's pipeline has no intent classifier besides rasa_gpt3's; "
            + CHOOSE_BASELINE,
            dropped,
        )
    pruned = {key: value for key, value in config.items() if key not in ("policies", "pipeline")}
    pruned["language"] = language
    pruned["pipeline"] = kept
    return BaselineConfig(pruned, source, dropped)


# ---------------------------------------------------------------------------------------------- training and predicting


@contextlib.contextmanager
def quiet_rasa(work_dir: Path) -> Iterator[None]:
    """Rasa's chatter off while it trains and loads (epoch bars, debug lines, banners); its cache in `work_dir`."""
    import structlog

    changes = {
        "LOG_LEVEL": "ERROR",  # also turns Rasa's epoch progress bars off
        "RASA_TELEMETRY_ENABLED": "false",
        "RASA_CACHE_DIRECTORY": str(work_dir / "rasa-cache"),
    }
    previous_env = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    previous_structlog = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    loggers = [logging.getLogger(name) for name in ("rasa", "tensorflow", "absl", "matplotlib")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        structlog.configure(**previous_structlog)
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(text: str) -> str:
    return next((part.strip() for part in str(text).splitlines() if part.strip()), "")


class RasaBaseline:
    """Trains the baseline pipeline with Rasa's `train_nlu` and asks the loaded model one message at a time."""

    def __init__(self, baseline: BaselineConfig, domain: Any, work_dir: Path, fallback: Optional[FallbackRule]):
        self.baseline = baseline
        self.domain = domain
        self.work_dir = work_dir
        self.fallback = fallback

    def train(self, train_data: Any, name: str) -> Path:
        """Trains on `train_data` in `<work_dir>/<name>`; returns the model archive. Raises ProjectError."""
        import yaml
        from rasa.shared.exceptions import RasaException
        from rasa.shared.nlu.training_data.formats.rasa_yaml import RasaYAMLWriter

        run_dir = self.work_dir / name
        config_path = write_atomic(run_dir / "config.yml", yaml.safe_dump(self.baseline.config, sort_keys=False))
        nlu_path = write_atomic(run_dir / "nlu.yml", RasaYAMLWriter().dumps(train_data))
        domain_path = None
        if self.domain is not None:
            domain_path = write_atomic(run_dir / "domain.yml", self.domain.as_yaml())
        from rasa.model_training import train_nlu

        try:
            with quiet_rasa(self.work_dir):
                model = train_nlu(
                    str(config_path),
                    str(nlu_path),
                    str(run_dir / "models"),
                    fixed_model_name="baseline",
                    domain=str(domain_path) if domain_path else None,
                )
        except (RasaException, ValueError, KeyError) as error:
            raise ProjectError(
                f"Rasa could not train the baseline ({self.baseline.source}): {_first_line(error)}; {CHOOSE_BASELINE}"
            ) from None
        if not model:
            raise ProjectError(f"Rasa trained no baseline model from {nlu_path}")
        return Path(model)

    def predict(self, model_path: Path, examples: Sequence[Any], bar: Any) -> List[Prediction]:
        """Parses every test message with the trained model and times each parse."""
        from rasa.core.agent import Agent

        with quiet_rasa(self.work_dir):
            agent = Agent.load(str(model_path))
            return asyncio.run(self._parse_all(agent, examples, bar))

    async def _parse_all(self, agent: Any, examples: Sequence[Any], bar: Any) -> List[Prediction]:
        from rasa.nlu.classifiers.fallback_classifier import is_fallback_classifier_prediction, undo_fallback_prediction

        predictions = []
        for example in examples:
            text = example.get("text")
            started = time.perf_counter()
            result = await agent.parse_message(text)
            elapsed = (time.perf_counter() - started) * 1000
            if is_fallback_classifier_prediction(result):
                result = undo_fallback_prediction(result)
            intent = result.get("intent") or {}
            ranking = result.get("intent_ranking") or []
            confidence = float(intent.get("confidence") or 0.0)
            predictions.append(
                Prediction(
                    text=text,
                    intent=example.get("intent"),
                    predicted=str(intent.get("name")),
                    confidence=confidence,
                    latency_ms=elapsed,
                    fallback=bool(self.fallback and self.fallback.applies(confidence, ranking)),
                )
            )
            bar.update(1)
        return predictions
