"""A Rasa bot project loaded through Rasa's own TrainingDataImporter, with Rasa's failures as one-line errors.

Rasa raises many exception types while it reads a project (YamlSyntaxException, YamlValidationException,
InvalidDomain, StoryParseError, ...), each with a multi-line message. `load_project` reads the project in
stages (config, domain, NLU data, stories) so that every failure names the file it came from, and turns it into
a `ProjectError` with one line. Rasa's warnings are collected in `BotProject.warnings` instead of being printed.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, TypeVar, Union

from rasa_gpt3.errors import ProjectError

PathLike = Union[str, os.PathLike]
T = TypeVar("T")


@dataclass
class BotProject:
    """A loaded Rasa project: its NLU training data, domain and story graph (stories and rules)."""

    name: str
    path: Path
    nlu: Any  # rasa.shared.nlu.training_data.training_data.TrainingData
    domain: Any  # rasa.shared.core.domain.Domain
    stories: Any  # rasa.shared.core.training_data.structures.StoryGraph
    config: dict = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


def _default_domain(project: Path) -> Optional[Path]:
    for candidate in (project / "domain.yml", project / "domain.yaml", project / "domain"):
        if candidate.exists():
            return candidate
    return None


def load_project(
    project_dir: PathLike,
    config: Optional[PathLike] = None,
    domain: Optional[PathLike] = None,
    data: Optional[Union[PathLike, Sequence[PathLike]]] = None,
) -> BotProject:
    """Loads the bot at `project_dir` with Rasa's TrainingDataImporter; raises ProjectError with one line.

    Defaults follow `rasa train`: `config.yml`, `domain.yml` (or a `domain/` folder) and `data/` inside the
    project. A missing config is allowed (only its `language` is used here); a missing domain gives an empty
    domain as in Rasa; missing data or data without a single NLU example is an error.
    """
    project = Path(project_dir)
    if not project.is_dir():
        raise ProjectError(f"project directory '{project}' does not exist (pass --project DIR of a Rasa bot)")

    config_path = Path(config) if config is not None else project / "config.yml"
    if config is not None and not config_path.is_file():
        raise ProjectError(f"config file '{config_path}' does not exist")
    domain_path = Path(domain) if domain is not None else _default_domain(project)
    if domain is not None and not domain_path.exists():
        raise ProjectError(f"domain '{domain_path}' does not exist")
    if data is None:
        data_paths = [project / "data"]
    elif isinstance(data, (str, os.PathLike)):
        data_paths = [Path(data)]
    else:
        data_paths = [Path(p) for p in data]
    for data_path in data_paths:
        if not data_path.exists():
            raise ProjectError(f"training data '{data_path}' does not exist (a Rasa project keeps it in data/)")

    _check_json_files(data_paths)
    collected: List[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import rasa.shared.utils.io
        from rasa.shared.importers.importer import TrainingDataImporter

        config_dict: dict = {}
        if config_path.is_file():
            config_dict = _stage(config_path, lambda: rasa.shared.utils.io.read_config_file(str(config_path))) or {}
            if not isinstance(config_dict, dict):
                raise ProjectError(f"config file '{config_path}' is not a YAML mapping")
        if domain_path is not None:
            # Rasa's file importer turns an InvalidDomain into a warning and an empty domain; load it first so a
            # domain Rasa rejects stops the export with its reason instead
            from rasa.shared.core.domain import Domain

            _stage(domain_path, lambda: Domain.load(str(domain_path)))
        # from here on the domain is known to be good: a failure comes from the training data
        data_stage = _DataStage(data_paths)
        importer = data_stage.run(
            lambda: TrainingDataImporter.load_from_dict(
                config=config_dict,
                config_path=str(config_path) if config_path.is_file() else None,
                domain_path=str(domain_path) if domain_path is not None else None,
                training_data_paths=[str(p) for p in data_paths],
            )
        )
        language = config_dict.get("language") or "en"
        nlu = data_stage.run(lambda: importer.get_nlu_data(language))
        domain_obj = data_stage.run(importer.get_domain)  # the domain merged with responses from data files
        stories = data_stage.run(importer.get_stories)
        for warning in caught:
            if issubclass(warning.category, (DeprecationWarning, PendingDeprecationWarning, ImportWarning)):
                continue  # library deprecations, nothing the bot's author can act on
            line = _first_line(str(warning.message))
            if line and line not in collected:
                collected.append(line)

    if not any(message.get("text") for message in nlu.intent_examples):
        raise ProjectError(
            f"no NLU training examples found in {_describe(data_paths)} (add an nlu: section with intents and examples)"
        )
    return BotProject(
        name=project.resolve().name,
        path=project,
        nlu=nlu,
        domain=domain_obj,
        stories=stories,
        config=config_dict,
        warnings=collected,
    )


def _check_json_files(data_paths: Sequence[Path]) -> None:
    """Rasa skips a training-data JSON file it cannot parse without a word; we stop with file and line instead."""
    import json

    for data_path in data_paths:
        files = [data_path] if data_path.is_file() else sorted(data_path.rglob("*.json"))
        for path in files:
            if path.suffix.lower() != ".json":
                continue
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError:
                raise ProjectError(f"'{path}' is not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise ProjectError(f"malformed JSON in '{path}' line {error.lineno}: {error.msg}") from None


class _DataStage:
    """Runs a step that reads the training data; on failure finds the one file Rasa refuses, to name it."""

    def __init__(self, data_paths: Sequence[Path]) -> None:
        self.data_paths = list(data_paths)

    def run(self, read: Callable[[], T]) -> T:
        try:
            return _stage(_describe(self.data_paths), read)
        except ProjectError:
            culprit = self._culprit()
            if culprit is None:
                raise
            raise culprit from None

    def _culprit(self) -> Optional[ProjectError]:
        """The error of the first data file that fails on its own (Rasa's message often names no file)."""
        import rasa.shared.data
        from rasa.shared.core.training_data.story_reader.yaml_story_reader import YAMLStoryReader
        from rasa.shared.nlu.training_data.loading import load_data

        files: List[Path] = []
        for data_path in self.data_paths:
            files.extend([data_path] if data_path.is_file() else sorted(p for p in data_path.rglob("*") if p.is_file()))
        for path in files:
            if path.suffix.lower() not in (".yml", ".yaml", ".json"):
                continue

            def read_one(path: Path = path) -> None:
                if rasa.shared.data.is_likely_yaml_file(path) and YAMLStoryReader.is_stories_file(path):
                    YAMLStoryReader().read_from_file(str(path))
                else:
                    load_data(str(path))

            try:
                _stage(path, read_one)
            except ProjectError as error:
                return error
        return None


def _describe(paths: Sequence[Path]) -> str:
    return ", ".join(f"'{p}'" for p in paths)


def _stage(source: Union[Path, str], read: Callable[[], T]) -> T:
    """Runs one loading step and maps Rasa's (and YAML/JSON) failures to a ProjectError naming the file."""
    from rasa.shared.exceptions import RasaException, YamlException

    where = source if isinstance(source, str) else f"'{source}'"
    try:
        return read()
    except YamlException as error:
        raise ProjectError(_yaml_error_line(error, where)) from None
    except RasaException as error:
        # InvalidDomain, SchemaValidationError (JSON NLU), StoryParseError, InvalidEntityFormatException,
        # InvalidConfigException, InvalidSlotTypeException, ...: Rasa's base class for errors in the user's data
        raise ProjectError(f"Rasa rejected {where}: {_first_line(str(error))}") from None
    except UnicodeDecodeError as error:
        raise ProjectError(f"{where} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    except OSError as error:
        raise ProjectError(f"cannot read {where}: {error.strerror or error}") from None


def _yaml_error_line(error: Any, where: str) -> str:
    from rasa.shared.exceptions import YamlSyntaxException

    filename = f"'{error.filename}'" if getattr(error, "filename", None) else where
    if isinstance(error, YamlSyntaxException):
        underlying = getattr(error, "underlying_yaml_exception", None)
        mark = getattr(underlying, "problem_mark", None)
        problem = getattr(underlying, "problem", None) or _first_line(str(underlying or "")) or "syntax error"
        line = f" line {mark.line + 1}" if mark is not None else ""
        return f"malformed YAML in {filename}{line}: {problem}"
    # YamlValidationException: the schema error with its line, as Rasa reports it
    details = [part.strip() for part in str(error).splitlines() if part.strip()]
    location = next((part for part in details if part.startswith("in ")), "")
    found = re.search(r":(\d+):?$", location)
    line = f" line {found.group(1)}" if found else ""
    reason = next((part for part in details[1:] if not part.startswith("in ")), "") or _first_line(str(error))
    return f"invalid Rasa file {filename}{line}: {reason}"


def _first_line(text: str) -> str:
    for part in str(text).splitlines():
        if part.strip():
            return part.strip()
    return ""
