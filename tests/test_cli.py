"""The `rasa-gpt3` command: each verb's help teaches with examples that parse, `models` verbs, one-line errors."""

from __future__ import annotations

import argparse
import shlex
import sys

import pytest

from rasa_gpt3 import cli
from rasa_gpt3.entry_point import INTERRUPTED_EXIT_CODE, exit_code_of
from rasa_gpt3.errors import BudgetError


def _verb_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(name, parser) for every verb and sub-verb, e.g. ("models use", <parser>)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, verb in action.choices.items():
                yield f"{prefix}{name}", verb
                yield from _verb_parsers(verb, f"{prefix}{name} ")


VERBS = dict(_verb_parsers(cli.build_parser()))


def test_every_verb_and_sub_verb_is_there():
    assert set(VERBS) == {
        "export", "validate", "fine-tune", "follow", "status", "cancel", "list", "results", "models", "models list",
        "models use", "models prune", "models export", "evaluate", "local", "local serve", "nlu", "nlu serve",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(VERBS))
def test_each_verbs_help_says_what_it_does_and_shows_an_example_of_itself(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([*name.split(), "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    summary, details = VERBS[name].description.split("\n\n")
    flat = " ".join(text.split())
    assert " ".join(summary.split()) in flat and " ".join(details.split()) in flat
    assert f"  rasa-gpt3 {name}" in text.split("\nexamples:\n")[1]


def _examples(text: str):
    return [line.strip() for line in text.split("examples:\n")[1].splitlines() if line.startswith("  rasa-gpt3 ")]


@pytest.mark.parametrize(
    "example",
    [
        example
        for parser in [cli.build_parser(), *VERBS.values()]
        for example in _examples(parser.epilog)
        if not example.endswith("--help")
    ],
)
def test_every_example_in_the_help_parses_to_its_verb(example):
    argv = shlex.split(example)[1:]
    args = cli.build_parser().parse_args(argv)
    assert callable(args.run) and args.verb == argv[0]


@pytest.mark.parametrize(
    "argv, run, project",
    [
        (["models"], "_run_list", "."),
        (["models", "--project", "bot"], "_run_list", "bot"),
        (["models", "--project", "bot", "list"], "_run_list", "bot"),
        (["models", "list", "--project", "bot"], "_run_list", "bot"),
        (["models", "--project", "bot", "prune"], "_run_prune", "bot"),
        (["models", "use", "ft:x", "--task", "intent", "--project", "bot"], "_run_use", "bot"),
        (["models", "--project", "bot", "use", "ft:x", "--task", "intent"], "_run_use", "bot"),
    ],
)
def test_models_verbs_take_the_project_before_or_after_the_verb(argv, run, project):
    args = cli.build_parser().parse_args(argv)
    assert (args.run.__name__, args.project) == (run, project)


@pytest.mark.parametrize("argv", [["models", "list", "ft:x"], ["models", "prune", "--task", "intent"]])
def test_models_verbs_refuse_what_only_use_takes(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


def test_an_error_is_one_line_with_its_exit_code_and_ctrl_c_is_130(capsys):
    def over_budget() -> int:
        raise BudgetError("too dear")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert exit_code_of(over_budget) == 1
    assert capsys.readouterr().err == "error: too dear\n"
    assert exit_code_of(interrupted, interrupted="stopped; cleaned up") == INTERRUPTED_EXIT_CODE == 130
    assert capsys.readouterr().err == "stopped; cleaned up\n"
    assert exit_code_of(lambda: None) == 0 and exit_code_of(lambda: 3) == 3


def test_python_dash_m_runs_the_same_command():
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "rasa_gpt3.cli", "models", "use", "ft:x"], capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: `rasa-gpt3 models use` needs a MODEL and --task (e.g. models use ft:... --task intent)"
    ]


def test_the_base_model_defaults_the_help_names_are_the_ones_used():
    from rasa_gpt3.data.base_models import default_base_model, resolve_base_model

    help_text = VERBS["export"]._option_string_actions["--base-model"].help
    assert "(default: gpt-4o-mini, or babbage-002 with --format completion)" in help_text
    assert resolve_base_model("gpt-4o-mini").name == default_base_model("chat")
    assert default_base_model("completion") == "babbage-002"
