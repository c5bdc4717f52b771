"""The `nlu` group: `rasa-gpt3 nlu serve`, the Rasa-compatible NLU server of rasa_gpt3/nlu_server."""

from __future__ import annotations

from rasa_gpt3.cli.arguments import Verbs


def add_verbs(verbs: Verbs) -> None:
    """Adds `nlu` and its verb `serve` (their parser lives beside the server, in rasa_gpt3/nlu_server/command.py)."""
    from rasa_gpt3.nlu_server.command import add_parser

    add_parser(verbs)
