"""`python -m rasa_gpt3.demo example_bot` (what `make demo` runs): the whole plugin on one bot, offline.

1. Fine-tunes the bot's intent, entities and response models on the embedded local backend (no API key is used,
   even if one is set: the demo never spends money) and records them in the bot's `gpt3_models.yml`.
2. `rasa train` on the bot as it is (DIET + GPT3IntentClassifier in routing mode + GPT3EntityExtractor), and on
   a copy of its config without the rasa_gpt3 components (a DIET-only pipeline, as in a bot that only adds the
   fallback action).
3. Starts the action server (`rasa run actions`, served by rasa_sdk) and one `rasa run --enable-api` per model, all
   on 127.0.0.1 on free ports, each Rasa process with its own embedded local backend on the bot's state directory.
4. Plays the conversations of `<bot>/demo_conversation.yml` over the REST channel and prints, per user message,
   the bot's answers, the intent with its confidence, the entities, and who decided: DIET, the GPT intent model
   in routing mode, GPT re-classification in action_gpt3_fallback, a generated answer, or the canned failure
   response. It reads this from the tracker (`GET /conversations/<id>/tracker`), where the NLU component and the
   action record what they did.
5. Stops the servers and prints how to talk to the bot yourself.

Exit status 0 when every turn got an answer, 1 with one line on stderr otherwise. Logs of the servers and of
`rasa train` are kept in `<bot>/.rasa_gpt3/demo/`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rasa_gpt3.entry_point import exit_code_of
from rasa_gpt3.errors import ProjectError, RasaGPT3Error
from rasa_gpt3.intent_names import FALLBACK_INTENT

CONVERSATION_FILE = "demo_conversation.yml"
DEMO_DIR = Path(".rasa_gpt3") / "demo"
TASKS = ("intent", "entities", "response")
SERVER_START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 120.0

# who decided, as printed
DIET = "DIET"
GPT_ROUTING = "GPT intent model (routing mode in NLU)"
GPT_RECLASSIFIED = "GPT re-classification in action_gpt3_fallback"
GENERATED = "generated answer (GPT response model)"
FAILURE = "fallback failed -> canned response"


class DemoError(RasaGPT3Error):
    """The demo could not run; the message says which step failed and where its log is."""


# ---------------------------------------------------------------- what happened in one turn


@dataclass
class TurnReport:
    """One user message and what the bot made of it."""

    user: str
    bot: List[str] = field(default_factory=list)
    intent: Optional[str] = None
    confidence: Optional[float] = None
    decided_by: str = DIET
    detail: str = ""
    entities: List[str] = field(default_factory=list)


def _confidence(intent: Optional[Dict[str, Any]]) -> Optional[float]:
    if not intent or intent.get("confidence") is None:
        return None
    return float(intent["confidence"])


def _entities(parse_data: Dict[str, Any]) -> List[str]:
    shown = []
    for entity in parse_data.get("entities") or []:
        value = entity.get("value")
        text = f"{entity.get('entity')}={value}"
        extractor = entity.get("extractor")
        if extractor:
            text += f" ({extractor})"
        shown.append(text)
    return shown


def _nlu_view(parse_data: Dict[str, Any]) -> Tuple[str, str]:
    """(who decided in NLU, detail) from the parse data of one user message."""
    record = parse_data.get("gpt3") or {}
    previous = record.get("previous_intent") or {}
    if record.get("asked") and record.get("decided"):
        earlier = ""
        if previous.get("name"):
            earlier = f"DIET said {previous['name']} {float(previous.get('confidence') or 0):.2f}"
        return GPT_ROUTING, earlier
    ranking = parse_data.get("intent_ranking") or []
    intent = parse_data.get("intent") or {}
    if intent.get("name") == FALLBACK_INTENT:
        best = next((item for item in ranking if item.get("name") != FALLBACK_INTENT), None)
        if best is not None:
            return DIET, f"best guess {best['name']} {float(best.get('confidence') or 0):.2f}"
    return DIET, ""


def describe_turn(user: str, bot_texts: Sequence[str], new_events: Sequence[Dict[str, Any]]) -> TurnReport:
    """What the tracker events added by one user message say about who decided (pure; unit-tested)."""
    report = TurnReport(user=user, bot=list(bot_texts))
    users = [event for event in new_events if event.get("event") == "user"]
    if not users:
        report.decided_by, report.detail = "-", "no user event in the tracker"
        return report
    first = users[0].get("parse_data") or {}
    last = users[-1].get("parse_data") or {}
    report.decided_by, report.detail = _nlu_view(first)
    report.intent = (last.get("intent") or {}).get("name")
    report.confidence = _confidence(last.get("intent"))
    report.entities = _entities(last)
    reclassified = last.get("gpt3_fallback") or {}
    if reclassified.get("reclassified"):
        previous = reclassified.get("previous_intent") or {}
        report.decided_by = GPT_RECLASSIFIED
        report.detail = f"NLU said {previous.get('name')} {float(previous.get('confidence') or 0):.2f}; story continues"
    for event in new_events:
        marker = (event.get("metadata") or {}).get("rasa_gpt3") if event.get("event") == "bot" else None
        if not marker:
            continue
        if marker.get("source") == "generated":
            report.decided_by = GENERATED
            report.detail = f"{report.detail}; " if report.detail else ""
            report.detail += f"model {marker.get('model')}"
        elif marker.get("source") == "failure":
            report.decided_by = FAILURE
            report.detail = f"reason: {marker.get('reason')}"
    return report


def format_turn(report: TurnReport) -> str:
    """The transcript lines of one turn."""
    lines = [f"  user > {report.user}"]
    for text in report.bot or ["(no answer)"]:
        lines.append(f"  bot  < {text}")
    confidence = f" {report.confidence:.2f}" if report.confidence is not None else ""
    lines.append(f"         intent: {report.intent}{confidence} | decided by: {report.decided_by}")
    if report.detail:
        lines.append(f"         ({report.detail})")
    if report.entities:
        lines.append(f"         entities: {', '.join(report.entities)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of the demo's child processes: the local backend, no telemetry, unbuffered output."""
    env = dict(os.environ)
    env.update(
        {
            "RASA_GPT3_LOCAL": "1",
            "RASA_TELEMETRY_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "SANIC_HOST": "127.0.0.1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class Server:
    """A started child process serving HTTP on 127.0.0.1."""

    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.process.poll() is None

    def stop(self) -> None:
        """Stops the process (SIGINT, then SIGTERM, then SIGKILL), only this process."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def log_tail(path: Path, lines: int = 5) -> str:
    """The last non-empty lines of a log, for an error message."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    useful = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(useful[-lines:])


def start_server(name: str, command: Sequence[str], cwd: Path, log: Path, url: str, env: Dict[str, str]) -> Server:
    """Starts `command` with its output in `log`; returns at once (see `wait_ready`)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    return Server(name, process, url, log)


def start_action_server(project: Path, log: Path, env: Dict[str, str]) -> Server:
    """Starts the project's action server (`python -m rasa_sdk`, what `rasa run actions` runs) on a free port."""
    port = free_port()
    command = [sys.executable, "-m", "rasa_sdk", "--actions", "actions", "--port", str(port)]
    return start_server("action server", command, project, log, f"http://127.0.0.1:{port}", env)


def rasa_run_command(
    port: int,
    archive: Union[str, Path],
    endpoints: Union[str, Path, None] = None,
    credentials: Union[str, Path] = "credentials.yml",
) -> List[str]:
    """The command line of `rasa run --enable-api` on 127.0.0.1:`port` serving the model `archive`, in this Python.

    `endpoints` and `credentials` are paths as the server's working directory sees them (no endpoints: left out).
    """
    command = [sys.executable, "-m", "rasa", "run", "--enable-api", "-i", "127.0.0.1", "-p", str(port)]
    command += ["-m", str(archive)]
    if endpoints is not None:
        command += ["--endpoints", str(endpoints)]
    return command + ["--credentials", str(credentials)]


def http_json(method: str, url: str, body: Any = None, timeout: float = REQUEST_TIMEOUT) -> Any:
    """One JSON request over HTTP (standard library only); raises OSError / urllib errors."""
    data = json.dumps(body).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def wait_ready(server: Server, path: str, timeout: float = SERVER_START_TIMEOUT) -> None:
    """Waits until `server` answers `path` with 200; raises DemoError when it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise DemoError(
                f"{server.name} exited with status {server.process.returncode}: {log_tail(server.log)} "
                f"(log: {server.log})"
            )
        try:
            with urllib.request.urlopen(server.url + path, timeout=5) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise DemoError(f"{server.name} did not start within {timeout:g} s (log: {server.log})")


# ---------------------------------------------------------------- the bot


def load_conversations(project: Path) -> List[Dict[str, Any]]:
    """The scripted conversations of `<project>/demo_conversation.yml`: [{title, pipeline, messages}]."""
    import yaml

    path = project / CONVERSATION_FILE
    if not path.is_file():
        raise ProjectError(f"{path}: not found (the demo plays the conversations listed there)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ProjectError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, list) or not conversations:
        raise ProjectError(f"{path}: expected `conversations:` with a list of {{title, pipeline, messages}}")
    checked = []
    for number, item in enumerate(conversations, 1):
        messages = item.get("messages") if isinstance(item, dict) else None
        pipeline = (item or {}).get("pipeline", "bot") if isinstance(item, dict) else None
        if (
            not isinstance(messages, list)
            or not messages
            or not all(isinstance(m, str) and m.strip() for m in messages)
        ):
            raise ProjectError(f"{path}: conversation {number} needs `messages:`, a list of non-empty texts")
        if pipeline not in ("bot", "diet_only"):
            raise ProjectError(f"{path}: conversation {number}: pipeline must be `bot` or `diet_only`")
        checked.append(
            {"title": str(item.get("title") or f"conversation {number}"), "pipeline": pipeline, "messages": messages}
        )
    return checked


def diet_only_config(project: Path, out: Path) -> Path:
    """Writes the bot's config.yml without the rasa_gpt3 components (a DIET-only pipeline) to `out`.

    What routing mode would have sent to the GPT intent model (confidence below `only_below_confidence`) goes to
    the fallback action instead: FallbackClassifier's threshold is raised to that value.
    """
    import yaml

    from rasa_gpt3.atomic_files import write_atomic

    config = yaml.safe_load((project / "config.yml").read_text(encoding="utf-8")) or {}
    pipeline = [component or {} for component in config.get("pipeline") or []]
    routing = [
        c.get("only_below_confidence")
        for c in pipeline
        if str(c.get("name")).endswith("GPT3IntentClassifier") and c.get("only_below_confidence") is not None
    ]
    kept = [c for c in pipeline if not str(c.get("name", "")).startswith("rasa_gpt3.")]
    for component in kept:
        if component.get("name") == "FallbackClassifier" and routing:
            component["threshold"] = max(float(component.get("threshold") or 0.0), float(routing[0]))
    config["pipeline"] = kept
    write_atomic(
        out,
        "# written by rasa_gpt3.demo: the bot's config.yml without the rasa_gpt3 components; messages\n"
        "# below the routing threshold go to action_gpt3_fallback (FallbackClassifier threshold)\n"
        + yaml.safe_dump(config, sort_keys=False),
    )
    return out


def fine_tune_models(project: Path, say) -> Dict[str, str]:
    """Fine-tunes (or reuses) the intent, entities and response models on the local backend; task -> model id."""
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.project import load_project
    from rasa_gpt3.finetune import ensure_fine_tuned
    from rasa_gpt3.settings import Settings

    bot = load_project(project)
    settings = Settings.from_env(project, force_local=True)
    models = {}
    for task in TASKS:
        started = time.monotonic()
        exported = export_task(task, bot.nlu, bot.domain, bot.stories)
        outcome = ensure_fine_tuned(settings, exported, project_name=bot.name)
        how = "reused (same data)" if outcome.reused else f"fine-tuned in {time.monotonic() - started:.1f} s"
        say(f"  {task:9} {outcome.model}  {how}, {len(exported.train)} training records")
        models[task] = outcome.model
    return models


def rasa_train(project: Path, config: Path, out: Path, log: Path, env: Dict[str, str]) -> Path:
    """Runs `rasa train` and returns the model archive (Rasa reuses its cache when nothing changed)."""
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "rasa",
        "train",
        "--config",
        str(config),
        "--domain",
        "domain.yml",
        "--data",
        "data",
        "--out",
        str(out),
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as output:
        status = subprocess.call(
            command, cwd=project, stdout=output, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
        )
    archives = sorted(out.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)
    if status != 0 or not archives:
        raise DemoError(f"`rasa train --config {config.name}` failed (status {status}): {log_tail(log)} (log: {log})")
    return archives[-1]


def play(rasa: Server, title: str, messages: Sequence[str], sender: str, say) -> List[TurnReport]:
    """Sends `messages` over the REST channel and prints each turn as it happens."""
    say(f"\n== {title}")
    reports = []
    tracker_url = f"{rasa.url}/conversations/{sender}/tracker"
    seen = len((http_json("GET", tracker_url) or {}).get("events") or [])
    for text in messages:
        answers = http_json("POST", f"{rasa.url}/webhooks/rest/webhook", {"sender": sender, "message": text}) or []
        events = (http_json("GET", tracker_url) or {}).get("events") or []
        bot_texts = [answer.get("text") or json.dumps(answer) for answer in answers]
        report = describe_turn(text, bot_texts, events[seen:])
        seen = len(events)
        reports.append(report)
        say(format_turn(report))
    return reports


def _say(line: str) -> None:
    print(line, flush=True)


def run_demo(project: Path, say=_say, diet_only: bool = True) -> int:
    """Runs the demo on `project` (see the module docstring); returns the exit status."""
    project = project.resolve()
    for required in ("config.yml", "domain.yml", "data", "endpoints.yml", "actions"):
        if not (project / required).exists():
            raise ProjectError(f"{project}: no {required} here; pass the directory of a Rasa bot such as example_bot")
    conversations = load_conversations(project)
    if not diet_only:
        conversations = [c for c in conversations if c["pipeline"] == "bot"]
    demo_dir = project / DEMO_DIR
    demo_dir.mkdir(parents=True, exist_ok=True)
    env = child_env()
    started = time.monotonic()

    say(f"rasa_gpt3 demo on {project.name}: everything runs on this machine (embedded local backend, no API key)")
    say("\n[1/4] fine-tuning the bot's models on the local backend")
    fine_tune_models(project, say)

    say("\n[2/4] rasa train")
    pipelines = {"bot": (project / "config.yml", project / "models")}
    if any(c["pipeline"] == "diet_only" for c in conversations):
        pipelines["diet_only"] = (diet_only_config(project, demo_dir / "config_diet_only.yml"), demo_dir / "models")
    archives = {}
    for name, (config, out) in pipelines.items():
        step = time.monotonic()
        say(f"  {name:9} rasa train --config {config.relative_to(project)} ...")
        archives[name] = rasa_train(project, config, out, demo_dir / f"train_{name}.log", env)
        say(f"  {name:9} -> {archives[name].relative_to(project)}  ({time.monotonic() - step:.0f} s)")

    say("\n[3/4] starting the action server and Rasa on 127.0.0.1")
    with ExitStack() as stack:
        actions = start_action_server(project, demo_dir / "actions.log", env)
        stack.callback(actions.stop)
        endpoints = demo_dir / "endpoints.yml"
        from rasa_gpt3.atomic_files import write_atomic

        write_atomic(endpoints, f'action_endpoint:\n  url: "{actions.url}/webhook"\n')
        servers = {}
        for name, archive in archives.items():
            port = free_port()
            command = rasa_run_command(port, archive, endpoints)
            servers[name] = start_server(
                f"rasa run ({name})", command, project, demo_dir / f"rasa_{name}.log", f"http://127.0.0.1:{port}", env
            )
            stack.callback(servers[name].stop)
        say("  (loading the models takes a minute)")
        wait_ready(actions, "/health")
        say(f"  action server  {actions.url}  (rasa_sdk, actions/actions.py with action_gpt3_fallback)")
        for name, server in servers.items():
            wait_ready(server, "/status")
            say(f"  rasa ({name:9}) {server.url}  (REST channel, model {archives[name].name})")

        say("\n[4/4] the conversations")
        reports: List[TurnReport] = []
        for number, conversation in enumerate(conversations, 1):
            server = servers[conversation["pipeline"]]
            title = f"{conversation['title']}  [pipeline: {conversation['pipeline']}]"
            reports += play(server, title, conversation["messages"], f"demo-{number}-{os.getpid()}", say)
    # the ExitStack stopped every server here
    unanswered = [report.user for report in reports if not report.bot]
    say(f"\nservers stopped; demo took {time.monotonic() - started:.0f} s. Logs: {demo_dir}")
    say("\nTalk to the bot yourself (the models above stay in the bot's gpt3_models.yml and models/):")
    say(f"  cd {project} && rasa run actions &     # the action server, port 5055 (endpoints.yml)")
    say(f"  cd {project} && rasa shell              # type messages; /stop to quit")
    if unanswered:
        raise DemoError(f"{len(unanswered)} message(s) got no answer, e.g. {unanswered[0]!r}; see {demo_dir}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: `python -m rasa_gpt3.demo [BOT_DIR] [--no-diet-only]`."""
    parser = argparse.ArgumentParser(prog="python -m rasa_gpt3.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("project", nargs="?", default="example_bot", help="the Rasa bot (default: example_bot)")
    parser.add_argument(
        "--no-diet-only",
        action="store_true",
        help="skip the conversation with the DIET-only pipeline (one `rasa train` less)",
    )
    args = parser.parse_args(argv)
    return exit_code_of(
        lambda: run_demo(Path(args.project), diet_only=not args.no_diet_only),
        interrupted="error: interrupted; the servers were stopped",
    )


if __name__ == "__main__":
    sys.exit(main())
