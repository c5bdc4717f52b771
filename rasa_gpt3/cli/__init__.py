"""The `rasa-gpt3` command: one module per group of verbs, each with its parser next to its handlers.

Heavy imports (Rasa, numpy, the SDK) happen inside each verb's handler, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from rasa_gpt3.cli import data, evaluate, finetune, local, models, nlu
from rasa_gpt3.cli.arguments import HelpFormatter, format_examples
from rasa_gpt3.entry_point import exit_code_of

# in the order `rasa-gpt3 --help` lists their verbs: the data, fine-tuning, the registry, evaluation, the backend
GROUPS = (data, finetune, models, evaluate, local, nlu)

DESCRIPTION = "Fine-tuned GPT models for a Rasa bot: export its data, fine-tune, and keep a model registry."
BACKENDS = (
    "With no OPENAI_API_KEY set, every verb uses the embedded local backend (offline, state in "
    "<project>/.rasa_gpt3/local). With a key, OpenAI (or OPENAI_BASE_URL) is used."
)
GETTING_STARTED = [
    "rasa-gpt3 export --project path/to/bot --out gpt3_data  # look at the data a model would learn from",
    "rasa-gpt3 fine-tune --project path/to/bot --task intent  # train and register an intent model",
    "rasa-gpt3 evaluate --project path/to/bot  # compare it with the bot's own pipeline",
    "rasa-gpt3 fine-tune --help  # each verb explains itself",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every verb."""
    parser = argparse.ArgumentParser(
        prog="rasa-gpt3",
        description=DESCRIPTION,
        epilog=f"{BACKENDS}\n\n{format_examples(GETTING_STARTED)}",
        formatter_class=HelpFormatter,
    )
    verbs = parser.add_subparsers(title="verbs", dest="verb", metavar="VERB")
    verbs.required = True
    for group in GROUPS:
        group.add_verbs(verbs)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `rasa-gpt3` console script: parses the arguments and runs the verb's handler."""
    args = build_parser().parse_args(argv)
    return exit_code_of(lambda: args.run(args))
