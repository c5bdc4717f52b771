"""`rasa-gpt3 local serve`: the embedded OpenAI-compatible backend as a standalone server."""

from __future__ import annotations

import argparse
import sys

from rasa_gpt3.cli.arguments import Verbs, add_verb
from rasa_gpt3.errors import RasaGPT3Error

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_verbs(verbs: Verbs) -> None:
    """Adds `local` and its verb `serve`."""
    parser = add_verb(
        verbs,
        "local",
        summary="the embedded OpenAI-compatible local backend",
        description="With no OPENAI_API_KEY, every rasa_gpt3 process starts this backend inside itself. "
        "`local serve` runs it on its own, for other processes or machines to share.",
        examples=["rasa-gpt3 local serve --port 8765"],
    )
    local_verbs = parser.add_subparsers(title="verbs", dest="local_verb", metavar="VERB")
    local_verbs.required = True

    serve = add_verb(
        local_verbs,
        "serve",
        summary="run the local backend in the foreground",
        description="Serves the OpenAI HTTP API (files, fine-tuning jobs, models, completions) on --host:--port "
        "until Ctrl-C, and prints the OPENAI_BASE_URL to use it with. --faults makes it misbehave on purpose, to "
        "test a client's retries.",
        examples=[
            "rasa-gpt3 local serve  # http://127.0.0.1:8765/v1, state in ./.rasa_gpt3/local",
            "rasa-gpt3 local serve --port 0 --state /tmp/backend  # a free port",
            "rasa-gpt3 local serve --host 0.0.0.0 --token s3cret  # reachable from other machines",
            "rasa-gpt3 local serve --faults 'status=429,first=3'  # the first 3 requests are rate limited",
        ],
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765, help="port to listen on, 0 for a free one (default: 8765)")
    serve.add_argument("--state", default=None, metavar="DIR", help="state directory (default: ./.rasa_gpt3/local)")
    serve.add_argument("--token", default=None, help="require this bearer token")
    serve.add_argument(
        "--faults",
        default=None,
        metavar="SPEC",
        help="inject faults into every request, e.g. 'status=429,first=3' or 'latency=0.2;drop,p=0.1'",
    )
    serve.add_argument(
        "--max-upload-mb", type=float, default=100.0, metavar="MB", help="upload size limit (default: 100)"
    )
    serve.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    """Checks the options, then serves until Ctrl-C, printing the URL once the port is bound."""
    from pathlib import Path

    from rasa_gpt3.local.embedded import BackendStartError, serve_forever
    from rasa_gpt3.local.faults import FaultSpecError, parse_faults
    from rasa_gpt3.settings import Settings

    state = Path(args.state) if args.state else Settings.from_env(Path.cwd()).local_state_dir
    try:
        parse_faults(args.faults or "")
    except FaultSpecError as error:
        raise RasaGPT3Error(f"--faults: {error}") from None
    if args.max_upload_mb <= 0:
        raise RasaGPT3Error("--max-upload-mb must be positive")
    if args.host not in LOOPBACK_HOSTS and not args.token:
        print(f"warning: serving on {args.host} without --token: anyone who can reach it can use it", file=sys.stderr)

    def ready(port: int) -> None:
        print(f"local backend on http://{args.host}:{port}/v1 (state: {state}); Ctrl-C stops it", flush=True)
        # the token is a secret: never printed (terminals and logs keep what they show)
        key = "<your --token>" if args.token else "local"
        print(f"use it with: OPENAI_BASE_URL=http://{args.host}:{port}/v1 OPENAI_API_KEY={key}", flush=True)

    try:
        serve_forever(
            state,
            host=args.host,
            port=args.port,
            token=args.token,
            faults=args.faults,
            max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
            on_ready=ready,
        )
    except BackendStartError as error:
        raise RasaGPT3Error(str(error)) from None
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0
