"""What the verbs share: the verb parser with its examples, and the options several verbs take, each declared once."""

from __future__ import annotations

import argparse
import textwrap
from typing import Optional, Sequence

from rasa_gpt3.prompts import FORMATS, TASKS

# the subparsers object argparse returns from add_subparsers (its class is private)
Verbs = argparse._SubParsersAction


class HelpFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description to the terminal, but keeps a paragraph with indented lines as written.

    argparse would otherwise run the example commands together into one line.
    """

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in textwrap.dedent(text).strip().split("\n\n"):
            if any(line.startswith(" ") for line in paragraph.splitlines()):
                paragraphs.append(textwrap.indent(paragraph, indent))
            else:
                paragraphs.append(
                    textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent, subsequent_indent=indent)
                )
        return "\n\n".join(paragraphs)


def add_verb(
    verbs: Verbs, name: str, *, summary: str, description: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """A verb's parser: `summary` is its line in `rasa-gpt3 --help`; its own --help adds the description and examples.

    An example may end in `  # what it does`.
    """
    return verbs.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
        epilog=format_examples(examples),
        formatter_class=HelpFormatter,
    )


def format_examples(examples: Sequence[str]) -> str:
    """The examples section of a --help: each command on its own line, its `# comment` on the line above.

    A blank line separates an example with a comment from its neighbours, so each comment reads with its command.
    """
    lines = ["examples:"]
    previous_had_comment = False
    for number, example in enumerate(examples):
        command, _, comment = example.partition("  # ")
        if number and (comment or previous_had_comment):
            lines.append("")
        if comment:
            lines.append(f"  # {comment.strip()}")
        lines.append(f"  {command.rstrip()}")
        previous_had_comment = bool(comment)
    return "\n".join(lines)


def add_project(parser: argparse.ArgumentParser, default: object = ".") -> None:
    """--project: the bot the verb works on (its data, its model registry, its local backend's state)."""
    parser.add_argument("--project", default=default, metavar="DIR", help="the Rasa bot project (default: .)")


def add_task(
    parser: argparse.ArgumentParser,
    *,
    default: Optional[str] = "intent",
    allow_all: bool = False,
    help_text: str = "what the model learns",
) -> None:
    """--task: intent, entities or response (and `all` where a verb can do every task)."""
    choices = TASKS + ("all",) if allow_all else TASKS
    default_text = f" (default: {default})" if default else ""
    parser.add_argument("--task", choices=choices, default=default, help=f"{help_text}{default_text}")


def add_format(parser: argparse.ArgumentParser, *, default_text: str = "the base model's") -> None:
    """--format: chat or completion records."""
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help=f"chat (gpt-4o-mini, gpt-4.1-nano) or completion (babbage-002, davinci-002) records "
        f"(default: {default_text})",
    )


def add_base_model(parser: argparse.ArgumentParser, *, purpose: str) -> None:
    """--base-model: the model fine-tuned, whose token limit and prices apply."""
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="NAME",
        help=f"base model {purpose} (default: gpt-4o-mini, or babbage-002 with --format completion)",
    )


def add_epochs(parser: argparse.ArgumentParser) -> None:
    """--epochs: how many passes over the training data a fine-tune makes."""
    help_text = "fine-tune epochs, 1 to 50 (default: chosen from the data size, as OpenAI does)"
    parser.add_argument("--epochs", type=int, default=None, metavar="N", help=help_text)


def add_job(parser: argparse.ArgumentParser) -> None:
    """JOB: the fine-tuning job a verb is about."""
    parser.add_argument("job", metavar="JOB", help="the job's id, e.g. ftjob-abc123 (`rasa-gpt3 list` shows them)")


def project_settings(args: argparse.Namespace):
    """Settings for the project of `args` (environment first: OPENAI_API_KEY, OPENAI_BASE_URL, RASA_GPT3_*)."""
    from rasa_gpt3.settings import Settings

    return Settings.from_env(args.project)
