"""`rasa-gpt3 nlu serve` (also `python -m rasa_gpt3.nlu_server`): the NLU server in the foreground.

`add_parser(subparsers)` adds the `nlu` group with its verb `serve` to an argparse sub-parser set; `run(args)` is the
handler it installs (`args.run`). Rasa and the model load only when the verb runs, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rasa_gpt3.entry_point import exit_code_of
from rasa_gpt3.errors import RasaGPT3Error
from rasa_gpt3.nlu_server.fallback import DEFAULT_FALLBACK_INTENT

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 5006


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `nlu serve`."""
    parser.add_argument(
        "--model",
        "-m",
        default="models",
        metavar="PATH",
        help="a Rasa model archive, or a directory: its newest archive (default: models)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port",
        "-p",
        type=int,
        default=DEFAULT_PORT,
        help=f"port to listen on, 0 for a free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="messages parsed at once (default: 32); more wait in a queue inside the budget",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="answer every message within this time, with the fallback intent if the pipeline is "
        "not done (default: the GPT components' timeouts added up + 0.5)",
    )
    parser.add_argument(
        "--token", default=None, help='require ?token=T (or "token" in the body), as `rasa run --auth-token` does'
    )
    parser.add_argument(
        "--fallback-intent",
        default=DEFAULT_FALLBACK_INTENT,
        metavar="NAME",
        help=f"the intent of a message the pipeline did not parse in time (default: {DEFAULT_FALLBACK_INTENT})",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds `nlu` and its verb `serve` to `subparsers` (the CLI's help style, with examples); the `nlu` parser."""
    from rasa_gpt3.cli.arguments import add_verb

    parser = add_verb(
        subparsers,
        "nlu",
        summary="a Rasa-compatible NLU server that parses many messages at once",
        description="Rasa 3.6 runs the NLU pipeline inside its event loop, so while the GPT model answers one "
        "message, every conversation of that Rasa process waits. `nlu serve` runs the pipeline of a trained Rasa "
        "model on a thread pool behind POST /model/parse; point Rasa at it with endpoints.yml "
        "`nlu: url: http://HOST:PORT`.",
        examples=["rasa-gpt3 nlu serve --model models  # then `rasa run --endpoints endpoints_nlu_server.yml`"],
    )
    verbs = parser.add_subparsers(title="verbs", dest="nlu_verb", metavar="VERB")
    verbs.required = True
    serve = add_verb(
        verbs,
        "serve",
        summary="serve Rasa's POST /model/parse for a trained Rasa model",
        description="Loads the model and serves its NLU pipeline until Ctrl-C, every message answered within "
        "--timeout (the fallback intent when the pipeline is late). It prints the `nlu:` lines for Rasa's "
        "endpoints.yml.",
        examples=[
            "rasa-gpt3 nlu serve --model models  # the newest model in models/, on http://127.0.0.1:5006",
            "rasa-gpt3 nlu serve --model models/bot.tar.gz --port 0  # a free port",
            "rasa-gpt3 nlu serve --model models --host 0.0.0.0 --token s3cret  # reachable from other machines",
            "rasa-gpt3 nlu serve --model models --threads 64 --timeout 3",
        ],
    )
    add_arguments(serve)
    serve.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Checks the options, loads the model, then serves until Ctrl-C, printing the endpoints.yml lines to use."""
    if args.threads is not None and args.threads < 1:
        raise RasaGPT3Error("--threads must be at least 1")
    if args.timeout is not None and args.timeout <= 0:
        raise RasaGPT3Error("--timeout must be a positive number of seconds")
    if not Path(args.model).exists():
        raise RasaGPT3Error(f"--model: {args.model} does not exist (train the bot with `rasa train` first)")
    if args.host not in LOOPBACK_HOSTS and not args.token:
        print(
            f"warning: serving on {args.host} without --token: anyone who can reach it can parse with the model",
            file=sys.stderr,
        )

    from rasa_gpt3.nlu_server.server import DEFAULT_THREADS, NLUServer, NLUServerError, load_agent, serve

    _configure_logging()
    try:
        agent = load_agent(Path(args.model))
        server = NLUServer(
            agent,
            threads=args.threads or DEFAULT_THREADS,
            timeout=args.timeout,
            token=args.token,
            fallback_intent=args.fallback_intent,
        )
    except NLUServerError as error:
        raise RasaGPT3Error(str(error)) from None

    def ready(port: int) -> None:
        print(
            f"NLU server for {server.model_file} on http://{args.host}:{port} ({server.threads} threads, every "
            f"message answered within {server.timeout:g} s); Ctrl-C stops it",
            flush=True,
        )
        token = f"\n  token: {args.token}" if args.token else ""
        print(
            f"in Rasa's endpoints.yml:\nnlu:\n  url: http://{args.host}:{port}{token}\n"
            f"  timeout: {server.timeout + 0.5:g}",
            flush=True,
        )

    try:
        serve(server, host=args.host, port=args.port, on_ready=ready)
    except NLUServerError as error:
        raise RasaGPT3Error(str(error)) from None
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


def _configure_logging() -> None:
    """Rasa's log format at INFO, as `rasa run` prints it."""
    import logging

    from rasa.utils.common import configure_logging_and_warnings
    from rasa.utils.io import configure_colored_logging
    from rasa.utils.log_utils import configure_structlog

    configure_logging_and_warnings(logging.INFO)
    configure_colored_logging("INFO")
    configure_structlog(logging.INFO)


def main(argv=None) -> int:
    """`python -m rasa_gpt3.nlu_server [options]`: `nlu serve` without the rasa-gpt3 CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m rasa_gpt3.nlu_server",
        description="Serve POST /model/parse for a trained Rasa model, many messages "
        "at once (see `rasa-gpt3 nlu serve --help`).",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    return exit_code_of(lambda: run(args))
