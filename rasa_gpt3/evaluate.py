"""`rasa-gpt3 evaluate`: the fine-tuned model against the bot's own NLU pipeline, on the same data, as numbers.

For every shot count k (examples per intent; `all` = the whole training split) and repeat, both sides are trained
on the same examples and asked about the same test messages: the baseline through Rasa's own `train_nlu` and a
loaded Rasa model (`Agent.parse_message`, as `rasa test nlu` does), the fine-tuned side through `export_task`,
`ensure_fine_tuned` and the serving call of `rasa_gpt3.inference` that the NLU component uses. The report has
accuracy, macro-F1 and per-intent precision/recall/F1 (Rasa's `intent_report.json` shape, computed by Rasa's own
report code), out-of-scope handling, latency p50/p95 per message, API calls, tokens and cost.

Decisions (the issue is silent on these):
- Test set: a stratified, seeded hold-out per (full) intent with export's `stratified_split` (an intent with a
  single example stays in training); or `--test-file`, and then all of the project's NLU data is the training pool.
- k-shot sampling: per full intent (each `faq/ask_x` counts as its own class) a seeded permutation per repeat,
  of which the first k are taken, so a repeat's 10-shot set is part of its 30-shot set and the curve compares like
  with like. An intent with fewer than k training examples gives all it has. `all` runs once: repeating it would
  train on the same data again.
- Baseline pipeline: `--baseline`, else the project's config.yml, with its policies dropped. Components that cannot
  run here and do not decide intents are dropped and named in the report (a Duckling extractor whose server does not
  answer, spaCy/MITIE entity extractors when the library or model is missing), and so are rasa_gpt3's own
  components (they are the other side). When a component that shapes the intent decision cannot run (a spaCy
  tokenizer or featurizer without spaCy, ...) or no intent classifier is left, the baseline is Rasa's default
  pipeline and the report says why. No config.yml at all also means Rasa's default pipeline.
- Predictions are read as `rasa test nlu` reads them: a FallbackClassifier prediction is undone so the top intent
  counts. Whether the bot would have fallen back is recorded per message with one rule for both sides: the
  FallbackClassifier threshold and ambiguity threshold of the baseline config (else of the project's config.yml).
- Out-of-scope: when the data has an out-of-scope intent (`out_of_scope`, `oos`, or `--out-of-scope-intent`), a
  message counts as rejected when it is predicted as that intent or falls back; the report has out-of-scope
  recall/precision and the share of in-scope messages wrongly rejected.
- The fine-tuned side never touches the project's own registry or local backend state: its models are recorded in
  `<out>/gpt3_models.yml` and, offline, trained by a local backend in `<out>/.rasa_gpt3/local`, so re-running with
  the same `--out` reuses every model trained on identical data. Fine-tunes use all k-shot examples for training
  (no validation split), like the baseline.
- Serving calls go through the NLU component's bounded call (`inference.classify`, one retry) with the cache off,
  so every test message costs one real call, and with the request timeout of the settings (30 s) rather than the
  component's 2 s budget, so latency is measured rather than cut off; the report counts the calls slower than that
  budget (inside the bot they would have fallen back). The circuit breaker is off too: five failed calls in a row
  stop the evaluation with the reason. A single failed call counts as a fallback prediction, as in the bot.
- Tokens are the usage the API returns when it returns one, else counted with the base model's tokenizer; cost uses
  the base model's prices (`base_models.yml`), also offline, where it is what the same run would cost on OpenAI.
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import random
import shlex
import shutil
import socket
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.errors import BackendError, BudgetError, DataError, ProjectError

logger = logging.getLogger(__name__)

BASELINE = "baseline"
FINE_TUNED = "fine-tuned"
SYSTEMS = (BASELINE, FINE_TUNED)
ALL = "all"
RESULTS_VERSION = 1
OUT_OF_SCOPE_NAMES = ("out_of_scope", "outofscope", "out-of-scope", "oos")
MAX_FAILURES_IN_A_ROW = 5
NLU_FALLBACK = "nlu_fallback"

RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.md"
CURVE_PNG = "few_shot_curve.png"
CONFUSION_PNG = "confusion_matrix.png"


# ---------------------------------------------------------------------------------------------- options


def parse_shots(text: str) -> List[Optional[int]]:
    """Parses `--shots` ("1,2,5,all") into sorted distinct counts, None meaning all; raises DataError."""
    values: List[Optional[int]] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == ALL:
            value: Optional[int] = None
        else:
            try:
                value = int(part)
            except ValueError:
                raise DataError(f"--shots takes whole numbers and 'all' separated by commas, not '{part}'") from None
            if value < 1:
                raise DataError(f"--shots values must be at least 1, not {value}")
        if value not in values:
            values.append(value)
    if not values:
        raise DataError("--shots is empty; give e.g. 1,2,5,10,all")
    return sorted(values, key=lambda v: math.inf if v is None else v)


def shots_name(shots: Optional[int]) -> str:
    """'all' or the number of examples per intent."""
    return ALL if shots is None else str(shots)


@dataclass
class EvaluationOptions:
    """What `rasa-gpt3 evaluate` was asked to do."""

    project: Path
    out: Path
    baseline: Optional[Path] = None
    shots: Sequence[Optional[int]] = (None,)
    repeats: int = 1
    test_file: Optional[Path] = None
    test_fraction: float = 0.2
    seed: int = 42
    base_model: Optional[str] = None
    fmt: Optional[str] = None
    out_of_scope_intent: Optional[str] = None
    epochs: Optional[int] = None
    progress: bool = True
    command: Optional[str] = None

    def as_command(self) -> str:
        """The `rasa-gpt3 evaluate` command line that runs this evaluation (what the report shows to reproduce it)."""
        parts = ["rasa-gpt3", "evaluate", "--project", str(self.project)]
        if self.baseline is not None:
            parts += ["--baseline", str(self.baseline)]
        parts += ["--shots", ",".join(shots_name(s) for s in self.shots), "--repeats", str(self.repeats)]
        if self.test_file is not None:
            parts += ["--test-file", str(self.test_file)]
        elif self.test_fraction != 0.2:
            parts += ["--test-fraction", f"{self.test_fraction:g}"]
        if self.seed != 42:
            parts += ["--seed", str(self.seed)]
        for flag, value in (("--base-model", self.base_model), ("--format", self.fmt), ("--epochs", self.epochs),
                            ("--out-of-scope-intent", self.out_of_scope_intent)):
            if value is not None:
                parts += [flag, str(value)]
        parts += ["--out", str(self.out)]
        return " ".join(shlex.quote(part) for part in parts)

    def check(self) -> None:
        """Raises DataError (one line) for option values that cannot work."""
        if self.repeats < 1:
            raise DataError(f"--repeats must be at least 1, not {self.repeats}")
        if self.test_file is None and not 0 < self.test_fraction < 1:
            raise DataError(f"--test-fraction must be between 0 and 1, not {self.test_fraction}")
        if self.test_file is not None and not Path(self.test_file).is_file():
            raise DataError(f"test file '{self.test_file}' does not exist")
        if self.baseline is not None and not Path(self.baseline).is_file():
            raise DataError(f"baseline config '{self.baseline}' does not exist")
        if self.epochs is not None and self.epochs < 1:
            raise DataError(f"--epochs must be at least 1, not {self.epochs}")


# ---------------------------------------------------------------------------------------------- data


def full_intent(message: Any) -> str:
    """The class an example belongs to: `faq/ask_x` for a retrieval intent, else its intent."""
    return message.get("intent_response_key") or message.get("intent")


def text_examples(nlu: Any) -> List[Any]:
    """The NLU examples that have a text and an intent (examples from stories and the domain have no text)."""
    return [m for m in nlu.intent_examples if (m.get("text") or "").strip()]


def nlu_subset(examples: Sequence[Any], like: Any) -> Any:
    """A TrainingData of `examples` with `like`'s synonyms, regexes, lookup tables and the responses they use."""
    from rasa.shared.nlu.training_data.training_data import TrainingData

    responses = {}
    for message in examples:
        key = message.get("intent_response_key")
        if key:
            name = f"utter_{key}"
            if name in (like.responses or {}):
                responses[name] = like.responses[name]
    return TrainingData(
        list(examples),
        entity_synonyms=dict(like.entity_synonyms or {}),
        regex_features=list(like.regex_features or []),
        lookup_tables=list(like.lookup_tables or []),
        responses=responses,
    )


def split_train_test(nlu: Any, test_fraction: float, seed: int) -> Tuple[Any, Any]:
    """Stratified, seeded train/test split per full intent (export's `stratified_split`); returns two TrainingData."""
    from rasa_gpt3.data.export import stratified_split

    examples = sorted(text_examples(nlu), key=lambda m: (full_intent(m), m.get("text")))
    train_idx, test_idx = stratified_split([full_intent(m) for m in examples], test_fraction, seed)
    train = [examples[i] for i in sorted(train_idx)]
    test = [examples[i] for i in sorted(test_idx)]
    return nlu_subset(train, nlu), nlu_subset(test, nlu)


def sample_shots(train: Any, shots: Optional[int], seed: int) -> Any:
    """At most `shots` examples per full intent (all when None), by a seeded permutation per intent.

    The same seed gives nested samples: the first k of one permutation are inside its first 2k.
    """
    groups: Dict[str, List[Any]] = {}
    for message in text_examples(train):
        groups.setdefault(full_intent(message), []).append(message)
    chosen: List[Any] = []
    for intent in sorted(groups):
        members = sorted(groups[intent], key=lambda m: m.get("text"))
        random.Random(f"{seed}/{intent}").shuffle(members)
        chosen.extend(members if shots is None else members[:shots])
    return nlu_subset(chosen, train)


def training_and_test_data(project: Any, options: "EvaluationOptions") -> Tuple[Any, List[Any], str]:
    """(training pool TrainingData, test examples, where the test set came from) for the loaded `project`."""
    from rasa_gpt3.data.project import load_project

    if options.test_file is not None:
        test_project = load_project(options.project, data=options.test_file)
        train_pool = nlu_subset(sorted(text_examples(project.nlu), key=lambda m: (full_intent(m), m.get("text"))),
                                project.nlu)
        test_examples = text_examples(test_project.nlu)
        test_source = f"--test-file {options.test_file}"
    else:
        train_pool, test_data = split_train_test(project.nlu, options.test_fraction, options.seed)
        test_examples = text_examples(test_data)
        test_source = f"stratified split: {options.test_fraction:g} of each intent held out, seed {options.seed}"
    if not test_examples:
        raise DataError(f"the test set ({test_source}) has no examples with text and intent")
    return train_pool, test_examples, test_source


def find_out_of_scope_intent(intents: Sequence[str], explicit: Optional[str] = None) -> Optional[str]:
    """The out-of-scope intent of the data: `explicit` (must exist), else one named like out_of_scope / oos."""
    if explicit:
        if explicit not in intents:
            raise DataError(f"--out-of-scope-intent '{explicit}' is not an intent of the data")
        return explicit
    for intent in sorted(intents):
        if intent.lower() in OUT_OF_SCOPE_NAMES:
            return intent
    return None


# ---------------------------------------------------------------------------------------------- fallback rule


@dataclass(frozen=True)
class FallbackRule:
    """FallbackClassifier's decision: top confidence below `threshold`, or top two closer than `ambiguity_threshold`."""

    threshold: float
    ambiguity_threshold: float = 0.1

    def applies(self, confidence: float, ranking: Sequence[Dict[str, Any]]) -> bool:
        """Whether the bot would predict nlu_fallback for this top confidence and ranking."""
        if confidence < self.threshold:
            return True
        if len(ranking) >= 2:
            first = float(ranking[0].get("confidence", 1.0))
            second = float(ranking[1].get("confidence", 1.0))
            return first - second < self.ambiguity_threshold
        return False

    @classmethod
    def from_pipeline(cls, pipeline: Sequence[Dict[str, Any]]) -> Optional["FallbackRule"]:
        """The rule of the pipeline's FallbackClassifier (Rasa's defaults for missing keys); None without one."""
        for component in pipeline or []:
            if isinstance(component, dict) and str(component.get("name", "")).split(".")[-1] == "FallbackClassifier":
                return cls(
                    threshold=float(component.get("threshold", 0.3)),
                    ambiguity_threshold=float(component.get("ambiguity_threshold", 0.1)),
                )
        return None


# ---------------------------------------------------------------------------------------------- baseline config


# components that only extract entities (or only feed such extractors): dropping them leaves intents unchanged
_ENTITY_ONLY = {
    "DucklingEntityExtractor", "SpacyEntityExtractor", "MitieEntityExtractor", "CRFEntityExtractor",
    "RegexEntityExtractor", "EntitySynonymMapper", "SpacyNLP", "MitieNLP",
}
# components that need a Python package Rasa does not install by default
_NEEDS_PACKAGE = {
    "SpacyNLP": "spacy", "SpacyTokenizer": "spacy", "SpacyFeaturizer": "spacy", "SpacyEntityExtractor": "spacy",
    "MitieNLP": "mitie", "MitieTokenizer": "mitie", "MitieFeaturizer": "mitie", "MitieEntityExtractor": "mitie",
    "MitieIntentClassifier": "mitie", "JiebaTokenizer": "jieba", "LanguageModelFeaturizer": "transformers",
}
_INTENT_CLASSIFIERS = {
    "DIETClassifier", "LogisticRegressionClassifier", "SklearnIntentClassifier", "KeywordIntentClassifier",
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


def unavailable_reason(component: Dict[str, Any]) -> Optional[str]:
    """Why a pipeline component cannot run on this machine (missing package, model or server), or None."""
    name = _short_name(component)
    package = _NEEDS_PACKAGE.get(name)
    if package and _package_missing(package):
        return f"{package} is not installed"
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
    try:
        from rasa.engine.recipes.default_recipe import DefaultV1Recipe
        from rasa.nlu.classifiers.classifier import IntentClassifier

        registered = DefaultV1Recipe._from_registry(str(component.get("name")))
        return issubclass(registered.clazz, IntentClassifier)
    except Exception:  # an unknown custom component: Rasa itself will say what is wrong when it trains
        return False


def rasa_default_config(language: str = "en") -> Dict[str, Any]:
    """Rasa's own default NLU configuration (what `rasa init` and an empty pipeline give), for `language`."""
    import importlib.resources

    import yaml

    text = importlib.resources.files("rasa.engine.recipes").joinpath("config_files", "default_config.yml").read_text()
    config = yaml.safe_load(text)
    return {"recipe": config.get("recipe", "default.v1"), "language": language, "pipeline": config["pipeline"]}


def resolve_baseline(project_config: Optional[Dict[str, Any]], baseline: Optional[Path] = None) -> BaselineConfig:
    """The baseline pipeline: `baseline` if given, else the project's config, pruned as the module docstring says."""
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
        return BaselineConfig(rasa_default_config(language), "Rasa's default pipeline (the project's config.yml has none)")

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
            f"Rasa's default pipeline, because the project's pipeline needs what is missing here: {', '.join(blocking)}",
        )
    if not any(_is_intent_classifier(c) for c in kept):
        if baseline is not None:
            raise ProjectError(f"baseline config '{baseline}' has no intent classifier")
        return BaselineConfig(
            rasa_default_config(language),
            "Rasa's default pipeline, because the project's pipeline has no intent classifier besides rasa_gpt3's",
            dropped,
        )
    pruned = {key: value for key, value in config.items() if key not in ("policies", "pipeline")}
    pruned["language"] = language
    pruned["pipeline"] = kept
    return BaselineConfig(pruned, source, dropped)


# ---------------------------------------------------------------------------------------------- predictions


@dataclass
class Prediction:
    """One test message as one side saw it."""

    text: str
    intent: str
    predicted: str
    confidence: float
    latency_ms: float
    fallback: bool
    outcome: str = "ok"
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def correct(self) -> bool:
        """Whether the top intent is the true one (fallback aside, as `rasa test nlu` counts)."""
        return self.predicted == self.intent


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
    """Trains the baseline pipeline with Rasa's `train_nlu` and predicts through the loaded model, one message at a time."""

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
                    str(config_path), str(nlu_path), str(run_dir / "models"), fixed_model_name="baseline",
                    domain=str(domain_path) if domain_path else None,
                )
        except (RasaException, ValueError, KeyError) as error:
            raise ProjectError(f"Rasa could not train the baseline ({self.baseline.source}): {_first_line(error)}") from None
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
            predictions.append(Prediction(
                text=text,
                intent=example.get("intent"),
                predicted=str(intent.get("name")),
                confidence=confidence,
                latency_ms=elapsed,
                fallback=bool(self.fallback and self.fallback.applies(confidence, ranking)),
            ))
            bar.update(1)
        return predictions


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

    def __init__(self, settings: Any, project_name: str, base_model: Optional[str], fmt: Optional[str],
                 epochs: Optional[int], fallback: Optional[FallbackRule]):
        from rasa_gpt3.inference import BoundedCaller, CallPolicy

        self.settings = settings
        self.project_name = project_name
        self.base_model = base_model
        self.fmt = fmt
        self.epochs = epochs
        self.fallback = fallback
        # a request's own timeout rather than the component's 2 s budget, so latency is measured, not cut off; no
        # cache (every message is a real call) and no breaker (five failures in a row stop the evaluation instead)
        self.caller = BoundedCaller(settings, CallPolicy(timeout=settings.timeout, cache_size=0, breaker_failures=10**9))

    def export(self, train_data: Any, seed: int) -> Any:
        """The intent fine-tune records of `train_data`, all for training (ExportedTask)."""
        from rasa_gpt3.data.export import export_task

        return export_task("intent", train_data, fmt=self.fmt, base_model=self.base_model, valid_fraction=0.0, seed=seed)

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
        from rasa_gpt3.inference import IntentModel

        started = time.perf_counter()
        outcome = ensure_fine_tuned(
            self.settings, exported, project_name=self.project_name, epochs=self.epochs, seed=seed,
            suffix=default_suffix(f"eval-{self.project_name}"),
        )
        intent_model = IntentModel(model=outcome.model, fmt=exported.fmt, labels=dict(exported.codec.labels),
                                   fallback_intent=NLU_FALLBACK)
        if self.settings.uses_local_backend:
            # the local backend loads a model on its first request; that is not a serving latency
            self.caller.warm_up(outcome.model, intent_model.request_body("hello"))
        return FineTunedModel(
            model=outcome.model, intent_model=intent_model, job_id=outcome.job_id, reused=outcome.reused,
            trained_tokens=outcome.estimate.trained_tokens, training_usd=outcome.estimate.usd,
            seconds=time.perf_counter() - started,
        )

    def _request_tokens(self, exported: Any, texts: Sequence[str]) -> List[int]:
        from rasa_gpt3 import prompts
        from rasa_gpt3.data.tokens import count_record_tokens, get_encoding

        requests = [prompts.intent_request(text, exported.fmt) for text in texts]
        return count_record_tokens(requests, get_encoding(exported.base_model.encoding))

    def predict(self, model: FineTunedModel, exported: Any, examples: Sequence[Any], bar: Any) -> List[Prediction]:
        """Classifies every test message with one bounded call each and times each call."""
        from rasa_gpt3.inference import classify

        texts = [example.get("text") for example in examples]
        counted = self._request_tokens(exported, texts)
        predictions: List[Prediction] = []
        failures_in_a_row = 0
        for example, text, tokens in zip(examples, texts, counted):
            started = time.perf_counter()
            result = classify(text, model.intent_model, self.caller)
            elapsed = (time.perf_counter() - started) * 1000
            failed = result.outcome not in ("ok", "unknown_label", "no_logprobs")
            failures_in_a_row = failures_in_a_row + 1 if failed else 0
            if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
                raise BackendError(
                    f"{MAX_FAILURES_IN_A_ROW} calls to {model.model} failed in a row ({result.outcome}: {result.error}); "
                    "evaluation stopped"
                )
            predictions.append(Prediction(
                text=text,
                intent=example.get("intent"),
                predicted=str(result.intent),
                confidence=float(result.confidence),
                latency_ms=elapsed,
                fallback=(not result.decided) or bool(self.fallback and self.fallback.applies(result.confidence, result.ranking)),
                outcome=result.outcome,
                # the API's usage; counted here only for a server that reports none
                prompt_tokens=0 if failed else (result.prompt_tokens or tokens),
                completion_tokens=0 if failed else (result.completion_tokens or 1),
            ))
            bar.update(1)
        return predictions


# ---------------------------------------------------------------------------------------------- metrics


def intent_report(targets: Sequence[str], predicted: Sequence[str]) -> Dict[str, Any]:
    """Per-intent precision/recall/F1/support with `confused_with`, plus accuracy and averages: Rasa's intent_report.json."""
    # Rasa's own report code (sklearn's classification_report, completed and annotated the way `rasa test nlu` does)
    from rasa.nlu.test import _calculate_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report, _, _, _, _, _ = _calculate_report(None, list(targets), list(predicted), report_as_dict=True)
    return report


def latency_summary(latencies_ms: Sequence[float]) -> Dict[str, float]:
    """p50, p95 and mean of per-message latencies in milliseconds."""
    import numpy as np

    if not latencies_ms:
        return {"p50": 0.0, "p95": 0.0, "mean": 0.0}
    values = np.asarray(latencies_ms, dtype=float)
    return {
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "mean": round(float(values.mean()), 3),
    }


def out_of_scope_summary(predictions: Sequence[Prediction], oos_intent: str) -> Dict[str, Any]:
    """How well out-of-scope messages are rejected (predicted as `oos_intent` or falling back) and in-scope ones kept."""
    def rejected(p: Prediction) -> bool:
        return p.predicted == oos_intent or p.fallback

    oos = [p for p in predictions if p.intent == oos_intent]
    in_scope = [p for p in predictions if p.intent != oos_intent]
    flagged = [p for p in predictions if rejected(p)]
    caught = sum(1 for p in oos if rejected(p))

    def share(part: int, whole: int) -> Optional[float]:
        return round(part / whole, 6) if whole else None

    return {
        "intent": oos_intent,
        "out_of_scope_messages": len(oos),
        "in_scope_messages": len(in_scope),
        "rejected": len(flagged),
        "recall": share(caught, len(oos)),
        "precision": share(caught, len(flagged)),
        "in_scope_rejected": share(sum(1 for p in in_scope if rejected(p)), len(in_scope)),
        "in_scope_accuracy": share(sum(1 for p in in_scope if p.correct and not p.fallback), len(in_scope)),
    }


def summarize_predictions(predictions: Sequence[Prediction], oos_intent: Optional[str]) -> Dict[str, Any]:
    """Accuracy, macro/weighted F1, the intent report, latency, fallback rate, usage and outcome counts of one run."""
    targets = [p.intent for p in predictions]
    predicted = [p.predicted for p in predictions]
    report = intent_report(targets, predicted)
    correct = sum(1 for p in predictions if p.correct)
    outcomes: Dict[str, int] = {}
    for p in predictions:
        outcomes[p.outcome] = outcomes.get(p.outcome, 0) + 1
    return {
        "n_test": len(predictions),
        "correct": correct,
        "accuracy": round(correct / len(predictions), 6) if predictions else 0.0,
        "macro_f1": round(float(report.get("macro avg", {}).get("f1-score", 0.0)), 6),
        "weighted_f1": round(float(report.get("weighted avg", {}).get("f1-score", 0.0)), 6),
        "fallback_rate": round(sum(1 for p in predictions if p.fallback) / len(predictions), 6) if predictions else 0.0,
        "latency_ms": latency_summary([p.latency_ms for p in predictions]),
        "outcomes": dict(sorted(outcomes.items())),
        "prompt_tokens": sum(p.prompt_tokens for p in predictions),
        "completion_tokens": sum(p.completion_tokens for p in predictions),
        "out_of_scope": out_of_scope_summary(predictions, oos_intent) if oos_intent else None,
        "report": report,
    }


def mean_and_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    if not values:
        return 0.0, 0.0
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def few_shot_curve(runs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per shot count and side: mean and spread over repeats of accuracy and macro-F1, and the training size."""
    rows = []
    shot_values: List[str] = []
    for run in runs:
        if run["shots"] not in shot_values:
            shot_values.append(run["shots"])
    for shots in shot_values:
        chosen = [run for run in runs if run["shots"] == shots]
        n_train, _ = mean_and_std([run["n_train"] for run in chosen])
        for system in SYSTEMS:
            metrics = [run["systems"][system] for run in chosen if system in run["systems"]]
            if not metrics:
                continue
            accuracy = mean_and_std([m["accuracy"] for m in metrics])
            macro_f1 = mean_and_std([m["macro_f1"] for m in metrics])
            rows.append({
                "shots": shots, "system": system, "repeats": len(metrics), "n_train": round(n_train, 1),
                "accuracy_mean": round(accuracy[0], 6), "accuracy_std": round(accuracy[1], 6),
                "macro_f1_mean": round(macro_f1[0], 6), "macro_f1_std": round(macro_f1[1], 6),
            })
    return rows


# ---------------------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class RunSpec:
    """One training of both sides: shots per intent (None = all), which repeat, and its seed."""

    shots: Optional[int]
    repeat: int
    seed: int

    @property
    def name(self) -> str:
        """A directory-safe name, e.g. `10-shot-r1` or `all-r0`."""
        return f"{shots_name(self.shots)}{'-shot' if self.shots else ''}-r{self.repeat}"


def plan_runs(shots: Sequence[Optional[int]], repeats: int, seed: int) -> List[RunSpec]:
    """Every (shots, repeat) to run, smallest shots first; `all` once."""
    runs = []
    for value in shots:
        for repeat in range(1 if value is None else repeats):
            runs.append(RunSpec(value, repeat, seed + repeat))
    return runs


@dataclass
class CostPlan:
    """What an evaluation would spend on a remote API before it starts."""

    backend: str
    base_model: str
    fine_tunes: int
    training_usd: float
    classifications: int
    serving_usd: float

    @property
    def total_usd(self) -> float:
        """Training plus serving."""
        return self.training_usd + self.serving_usd

    def describe(self) -> str:
        """One line for the confirmation prompt."""
        return (
            f"about ${self.total_usd:.2f} on {self.backend} ({self.fine_tunes} fine-tunes of {self.base_model}: "
            f"${self.training_usd:.2f}; {self.classifications:,} classification calls: ${self.serving_usd:.2f}; "
            "models already trained on identical data are reused for free)"
        )


@dataclass
class Evaluation:
    """The finished evaluation: the results document, every prediction, and the files written."""

    results: Dict[str, Any]
    predictions: Dict[Tuple[str, int, str], List[Prediction]]
    files: Dict[str, Path]


def evaluation_settings(out: Path) -> Any:
    """Settings whose registry (`<out>/gpt3_models.yml`) and local backend state (`<out>/.rasa_gpt3/local`) are in `out`."""
    from rasa_gpt3.settings import Settings

    return Settings.from_env(out)


def _progress_bar(enabled: bool, **options: Any) -> Any:
    from tqdm import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **options)


def run_evaluation(options: EvaluationOptions, confirm: Optional[Callable[[CostPlan], bool]] = None) -> Evaluation:
    """Runs the whole evaluation and writes results.json, predictions.jsonl, summary.md and the plots into `options.out`.

    `confirm` is asked before anything is spent on a remote API; without it (or when it says no) a remote run is
    refused with BudgetError. Raises ProjectError, DataError, BackendError or BudgetError with one line.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    options.check()
    # Rasa's imports warn about SQLAlchemy 2.0, jax and pyparsing names, and some of them reset the warning
    # filters while they load; nothing a user can act on, so their stderr is dropped (exceptions still propagate)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import rasa.core.agent  # noqa: F401
        import rasa.model_training  # noqa: F401
        import rasa.nlu.test  # noqa: F401
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.prompts import normalize_text

    project = load_project(options.project)
    out = Path(options.out)
    settings = evaluation_settings(out)

    train_pool, test_examples, test_source = training_and_test_data(project, options)
    intents = sorted({m.get("intent") for m in text_examples(train_pool)} | {m.get("intent") for m in test_examples})
    training_texts = {normalize_text(m.get("text")) for m in text_examples(train_pool)}
    test_in_training = sum(1 for m in test_examples if normalize_text(m.get("text")) in training_texts)
    oos_intent = find_out_of_scope_intent(intents, options.out_of_scope_intent)

    baseline = resolve_baseline(project.config if options.baseline is None else None, options.baseline)
    fallback = (FallbackRule.from_pipeline(baseline.config.get("pipeline"))
                or FallbackRule.from_pipeline((project.config or {}).get("pipeline")))

    runs = plan_runs(options.shots, options.repeats, options.seed)
    fine_tuned = FineTunedSide(settings, project.name, options.base_model, options.fmt, options.epochs, fallback)
    samples = {run: sample_shots(train_pool, run.shots, run.seed) for run in runs}
    exports = {run: fine_tuned.export(samples[run], run.seed) for run in runs}
    plan = _cost_plan(settings, fine_tuned, exports, [m.get("text") for m in test_examples])
    if not settings.uses_local_backend:
        if confirm is None or not confirm(plan):
            raise BudgetError(f"evaluate would spend {plan.describe()}; not confirmed, nothing was spent")

    work_dir = Path(tempfile.mkdtemp(prefix="rasa-gpt3-evaluate-"))
    results_runs: List[Dict[str, Any]] = []
    predictions: Dict[Tuple[str, int, str], List[Prediction]] = {}
    rasa_side = RasaBaseline(baseline, project.domain, work_dir, fallback)
    try:
        overall = _progress_bar(options.progress, total=len(runs), desc="evaluate", unit="run", position=0)
        with overall:
            for run in runs:
                sample = samples[run]
                n_train = len(text_examples(sample))
                overall.set_description(f"{run.name}: training the baseline")
                started = time.perf_counter()
                model_path = rasa_side.train(sample, run.name)
                baseline_seconds = time.perf_counter() - started
                with _progress_bar(options.progress, total=len(test_examples), desc=f"{run.name} {BASELINE}",
                                   unit="msg", leave=False, position=1) as bar:
                    baseline_predictions = rasa_side.predict(model_path, test_examples, bar)
                shutil.rmtree(work_dir / run.name, ignore_errors=True)

                overall.set_description(f"{run.name}: fine-tuning")
                model = fine_tuned.train(exports[run], run.seed)
                calls_before = fine_tuned.caller.calls_sent
                with _progress_bar(options.progress, total=len(test_examples), desc=f"{run.name} {FINE_TUNED}",
                                   unit="msg", leave=False, position=1) as bar:
                    tuned_predictions = fine_tuned.predict(model, exports[run], test_examples, bar)
                api_calls = fine_tuned.caller.calls_sent - calls_before

                predictions[(shots_name(run.shots), run.repeat, BASELINE)] = baseline_predictions
                predictions[(shots_name(run.shots), run.repeat, FINE_TUNED)] = tuned_predictions
                results_runs.append(_run_result(run, n_train, baseline_predictions, baseline_seconds,
                                                tuned_predictions, model, api_calls, exports[run], oos_intent))
                overall.update(1)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)

    results = {
        "version": RESULTS_VERSION,
        "command": options.command or options.as_command(),
        "project": {"name": project.name, "path": str(options.project)},
        "backend": settings.backend_name,
        "base_model": next(iter(exports.values())).base_model.name,
        "format": next(iter(exports.values())).fmt,
        "baseline": {"source": baseline.source, "dropped": baseline.dropped, "config": baseline.config},
        "data": {
            "test_source": test_source,
            "train_pool": len(text_examples(train_pool)),
            "test": len(test_examples),
            # test messages whose text is also a training example (only possible with --test-file)
            "test_in_training": test_in_training,
            "intents": len(intents),
            "out_of_scope_intent": oos_intent,
            "fallback_rule": asdict(fallback) if fallback else None,
        },
        "shots": [shots_name(s) for s in options.shots],
        "repeats": options.repeats,
        "seed": options.seed,
        "cost_plan": asdict(plan),
        "runs": results_runs,
        "curve": few_shot_curve(results_runs),
        "full_run": _full_run_index(results_runs),
        "totals": _totals(results_runs),
    }
    files = write_outputs(out, results, predictions)
    return Evaluation(results=results, predictions=predictions, files=files)


def _cost_plan(settings: Any, side: FineTunedSide, exports: Dict[RunSpec, Any], test_texts: Sequence[str]) -> CostPlan:
    training = serving = 0.0
    for exported in exports.values():
        cost = side.estimate(exported, test_texts)
        training += cost[0]
        serving += cost[1]
    first = next(iter(exports.values()))
    return CostPlan(
        backend=settings.backend_name, base_model=first.base_model.name, fine_tunes=len(exports),
        training_usd=round(training, 6), classifications=len(test_texts) * len(exports), serving_usd=round(serving, 6),
    )


def _run_result(run: RunSpec, n_train: int, baseline_predictions: List[Prediction], baseline_seconds: float,
                tuned_predictions: List[Prediction], model: FineTunedModel, api_calls: int, exported: Any,
                oos_intent: Optional[str]) -> Dict[str, Any]:
    from rasa_gpt3.inference import CallPolicy

    base = summarize_predictions(baseline_predictions, oos_intent)
    base.update({"train_seconds": round(baseline_seconds, 3), "api_calls": 0,
                 "cost_usd": {"training": 0.0, "serving": 0.0, "per_1000_messages": 0.0}})
    tuned = summarize_predictions(tuned_predictions, oos_intent)
    # calls slower than the NLU component's default budget would have fallen back inside the bot
    budget_ms = CallPolicy().timeout * 1000
    tuned["latency_ms"]["over_nlu_budget"] = sum(1 for p in tuned_predictions if p.latency_ms > budget_ms)
    serving = exported.base_model.usage_cost(tuned["prompt_tokens"], tuned["completion_tokens"])
    tuned.update({
        "train_seconds": round(model.seconds, 3),
        "model": model.model,
        "job": model.job_id,
        "reused": model.reused,
        "api_calls": api_calls,
        "trained_tokens": model.trained_tokens,
        "cost_usd": {
            "training": round(model.training_usd, 6),
            "serving": round(serving, 6),
            "per_1000_messages": round(serving / len(tuned_predictions) * 1000, 6) if tuned_predictions else 0.0,
        },
    })
    return {"shots": shots_name(run.shots), "repeat": run.repeat, "seed": run.seed, "n_train": n_train,
            "systems": {BASELINE: base, FINE_TUNED: tuned}}


def _full_run_index(runs: Sequence[Dict[str, Any]]) -> int:
    """The run with the most training data (the first repeat of the largest shot count)."""
    def size(item: Tuple[int, Dict[str, Any]]) -> Tuple[float, int]:
        index, run = item
        return (math.inf if run["shots"] == ALL else float(run["shots"]), -run["repeat"])

    return max(enumerate(runs), key=size)[0]


def _totals(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    tuned = [run["systems"][FINE_TUNED] for run in runs]
    return {
        "fine_tunes": len(tuned),
        "reused_models": sum(1 for t in tuned if t.get("reused")),
        "api_calls": sum(t["api_calls"] for t in tuned),
        "prompt_tokens": sum(t["prompt_tokens"] for t in tuned),
        "completion_tokens": sum(t["completion_tokens"] for t in tuned),
        "trained_tokens": sum(t["trained_tokens"] for t in tuned),
        "training_usd": round(sum(t["cost_usd"]["training"] for t in tuned), 6),
        "serving_usd": round(sum(t["cost_usd"]["serving"] for t in tuned), 6),
    }


def prediction_rows(predictions: Dict[Tuple[str, int, str], List[Prediction]]) -> Iterator[Dict[str, Any]]:
    """The lines of predictions.jsonl: one per run, side and test message."""
    for (shots, repeat, system), items in predictions.items():
        for p in items:
            row = {"shots": shots, "repeat": repeat, "system": system}
            row.update(asdict(p))
            row["latency_ms"] = round(p.latency_ms, 3)
            yield row


def write_outputs(out: Path, results: Dict[str, Any], predictions: Dict[Tuple[str, int, str], List[Prediction]]) -> Dict[str, Path]:
    """Writes results.json, predictions.jsonl, the full run's intent reports, summary.md and the PNGs into `out`."""
    from rasa_gpt3 import evaluation_report

    files: Dict[str, Path] = {}
    lines = [json.dumps(row, ensure_ascii=False) for row in prediction_rows(predictions)]
    files["predictions"] = write_atomic(out / PREDICTIONS_FILE, "\n".join(lines) + "\n")
    full = results["runs"][results["full_run"]]
    for system in SYSTEMS:
        name = f"{system.replace('-', '_')}_intent_report.json"
        files[f"{system} report"] = write_atomic(out / name, json.dumps(full["systems"][system]["report"], indent=2) + "\n")
    files["curve plot"] = evaluation_report.plot_curve(results, out / CURVE_PNG)
    key = (full["shots"], full["repeat"])
    files["confusion plot"] = evaluation_report.plot_confusion(
        {system: predictions[key + (system,)] for system in SYSTEMS}, out / CONFUSION_PNG,
        title=("all training examples" if full["shots"] == ALL else f"{full['shots']} examples per intent")
        + f" ({full['n_train']} training, {len(predictions[key + (BASELINE,)])} test messages)",
    )
    files["summary"] = write_atomic(out / SUMMARY_FILE, evaluation_report.summary_markdown(results))
    files["results"] = write_atomic(out / RESULTS_FILE, json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return files
