"""How many conversations Rasa answers at once while the GPT model thinks; prints one table.

    .venv/bin/python benchmarks/concurrency.py [--conversations 20] [--messages 3] [--latency 0.2] [--workers 1,2,4]
        [--backend embedded|standalone] [--realtime] [--compare-in-process]

Setup: example_bot copied to a temporary directory, its models fine-tuned on the embedded local backend, and
`rasa train --config config_gpt3_only.yml` (the GPT intent model decides every message: no DIET, no routing).
The model answers each chat completion after `--latency` seconds (RASA_GPT3_FAULTS=latency=0.2,path=/v1/chat).
With `--backend embedded` (the default) every process (Rasa, each Sanic worker, the NLU server, the action server)
runs its own embedded local backend on the project's `.rasa_gpt3/local`, so the stand-in model's own work (a few ms
of CPU per call) is done inside the process measured; with `--backend standalone` one `rasa-gpt3 local serve` process
answers them all over OPENAI_BASE_URL, as a remote API would. `--realtime` (root only) runs the processes of the
setup being measured, and the load, at real-time priority (SCHED_FIFO) while they are measured, so that other work
on a shared machine does not decide the figures; loading models stays at normal priority.

Per setup, over the REST channel, every request on a new connection (as a proxy in front of Rasa opens them; a
kept-alive connection would stay with the Sanic worker that accepted it):
- one at a time: --single conversations of --messages messages, one message after the other;
- load: --conversations conversations at once, each sending its --messages messages one after the other.
Texts are unique (no answer cache hides the model). After the load every conversation's tracker must hold exactly
its messages in order, each answered: "lost" counts messages missing or unanswered, "twice" messages seen twice.
"model calls at once" is the most chat completions the backends received within one latency of each other during
the load (from RASA_GPT3_REQUEST_LOG): 1 means the model calls were made one after the other.

Setups: Rasa 3.6 as it is (the NLU pipeline inside Sanic's event loop); `rasa run` with `nlu: url:` pointing at
`rasa-gpt3 nlu serve`; SANIC_WORKERS=N with Redis lock and tracker stores (needs `redis-server`); 2 workers with the
NLU server; with --compare-in-process, the alternative that was not chosen (the pipeline on a thread pool inside
Rasa, by patching MessageProcessor.parse_message in this benchmark only). Last, the action server alone:
--conversations requests for action_gpt3_fallback at once (the generate path: one model call each), straight to its
/webhook as Rasa sends them. Nothing here asserts; it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rasa_gpt3.demo import Server, fine_tune_models, free_port, rasa_train, start_server, wait_ready  # noqa: E402

CONFIG = "config_gpt3_only.yml"
RASA_RUN = "run --enable-api -i 127.0.0.1 -p {port} --credentials credentials.yml"
# one message per rule of example_bot; the number makes each text unique, the model still decides it confidently
TEMPLATES = (
    "what is my account balance? ref {n}",
    "thank you very much, customer {n}",
    "I want to transfer money ({n})",
)
# the alternative to the NLU server, measured for the README's comparison only: Rasa's pipeline on a thread pool
IN_PROCESS_POOL = """
import asyncio, concurrent.futures, sys
from rasa.core import processor
from rasa.shared.core.trackers import DialogueStateTracker
pool = concurrent.futures.ThreadPoolExecutor(32)
original = processor.MessageProcessor.parse_message
async def parse_message(self, message, tracker=None, only_output_properties=True):
    if self.http_interpreter:
        return await original(self, message, tracker, only_output_properties)
    tracker = tracker or DialogueStateTracker.from_events(message.sender_id, [])
    parse_data = await asyncio.get_running_loop().run_in_executor(
        pool, self._parse_message_with_graph, message, tracker, only_output_properties)
    self._update_full_retrieval_intent(parse_data)
    self._check_for_unseen_features(parse_data)
    return parse_data
processor.MessageProcessor.parse_message = parse_message
from rasa.__main__ import main
sys.argv = ["rasa"] + sys.argv[1:]
main()
"""


@dataclass
class Sample:
    """One request: how long it took and whether it was answered."""

    seconds: float
    answered: bool


@dataclass
class Row:
    """One line of the table."""

    setup: str
    single: List[Sample] = field(default_factory=list)
    load: List[Sample] = field(default_factory=list)
    wall: float = 0.0
    # wall-clock start and end of the load, to count the model calls made during it
    window: Tuple[float, float] = (0.0, 0.0)
    lost: int = 0
    twice: int = 0
    at_once: int = 0
    note: str = ""


def quantile(values: Sequence[float], share: float) -> float:
    """Nearest-rank quantile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def most_at_once(request_log: Path, window: float, between: Tuple[float, float]) -> int:
    """The most chat completions in flight together: arrived within `window` seconds of each other, `between`."""
    if not request_log.exists():
        return 0
    arrivals = []
    for line in request_log.read_text().splitlines():
        arrival, _, route = line.split(" ", 2)
        if route.endswith("/chat/completions") and between[0] <= float(arrival) <= between[1]:
            arrivals.append(float(arrival))
    arrivals.sort()
    best, start = 0, 0
    for end, arrival in enumerate(arrivals):
        while arrivals[start] <= arrival - window:
            start += 1
        best = max(best, end - start + 1)
    return best


# ---------------------------------------------------------------- the load


class Texts:
    """Unique message texts for the whole run."""

    def __init__(self) -> None:
        self.count = 0

    def conversation(self, messages: int) -> List[str]:
        """The texts of one conversation."""
        texts = []
        for index in range(messages):
            self.count += 1
            texts.append(TEMPLATES[index % len(TEMPLATES)].format(n=self.count))
        return texts


async def _post(session, url: str, body: Dict[str, Any], answered: Callable[[Any], bool] = bool) -> Sample:
    started = time.monotonic()
    try:
        async with session.post(url, json=body) as response:
            answer = await response.json(content_type=None) if response.status == 200 else None
    except Exception:  # a failed request is a lost message in the table, not the end of the benchmark
        answer = None
    return Sample(time.monotonic() - started, answer is not None and answered(answer))


async def _conversation(session, url: str, sender: str, texts: Sequence[str], samples: List[Sample]) -> None:
    for text in texts:
        samples.append(await _post(session, f"{url}/webhooks/rest/webhook", {"sender": sender, "message": text}))


def _session():
    import aiohttp

    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(force_close=True, limit=0)
    )


async def _measure(url: str, conversations: Dict[str, List[str]], at_once: bool) -> tuple[List[Sample], float]:
    samples: List[Sample] = []
    async with _session() as session:
        started = time.monotonic()
        if at_once:
            await asyncio.gather(
                *(_conversation(session, url, sender, texts, samples) for sender, texts in conversations.items())
            )
        else:
            for sender, texts in conversations.items():
                await _conversation(session, url, sender, texts, samples)
        return samples, time.monotonic() - started


async def _check(url: str, conversations: Dict[str, List[str]]) -> tuple[int, int]:
    """(lost, twice) from the trackers: messages missing or unanswered, messages recorded more than once."""
    lost = twice = 0
    async with _session() as session:
        for sender, texts in conversations.items():
            async with session.get(f"{url}/conversations/{sender}/tracker") as response:
                events = (await response.json()).get("events") or []
            users = [(i, event["text"]) for i, event in enumerate(events) if event.get("event") == "user"]
            seen = [text for _, text in users]
            twice += sum(seen.count(text) - 1 for text in set(seen))
            if [text for text in seen if text in texts] != [text for text in texts if text in seen]:
                lost += len(texts)  # out of order: count the conversation as lost
                continue
            lost += sum(1 for text in texts if text not in seen)
            for (index, _), (next_index, _) in zip(users, users[1:] + [(len(events), None)]):
                if not any(event.get("event") == "bot" for event in events[index:next_index]):
                    lost += 1
    return lost, twice


def play(row: Row, url: str, texts: Texts, args: argparse.Namespace, prefix: str) -> None:
    """A warm-up message (not measured: a fresh process does lazy work), one at a time, then all at once."""
    asyncio.run(_measure(url, {f"{prefix}-warm-up": texts.conversation(1)}, at_once=False))
    single = {f"{prefix}-single-{i}": texts.conversation(args.messages) for i in range(args.single)}
    load = {f"{prefix}-load-{i}": texts.conversation(args.messages) for i in range(args.conversations)}
    row.single, _ = asyncio.run(_measure(url, single, at_once=False))
    started = time.time()
    row.load, row.wall = asyncio.run(_measure(url, load, at_once=True))
    row.window = (started, time.time())
    row.lost, row.twice = asyncio.run(_check(url, load))
    row.lost += sum(1 for sample in row.load if not sample.answered)


# ---------------------------------------------------------------- the processes


@dataclass
class Bench:
    """The trained bot and how to start its processes."""

    project: Path
    archive: Path
    latency: float
    logs: Path
    # every local backend appends one line per API request here (RASA_GPT3_REQUEST_LOG)
    request_log: Path
    # the standalone backend's OPENAI_BASE_URL; None: each process runs its embedded backend
    model_url: Optional[str] = None
    started: List[Server] = field(default_factory=list)

    def env(self, **extra: str) -> Dict[str, str]:
        """A child's environment: the model (embedded or standalone) with its latency, no telemetry."""
        env = {key: value for key, value in os.environ.items() if not key.startswith(("OPENAI_", "RASA_GPT3_"))}
        env.update(
            {
                "RASA_GPT3_PROJECT": str(self.project),
                "RASA_GPT3_REQUEST_LOG": str(self.request_log),
                "RASA_TELEMETRY_ENABLED": "false",
                "TF_CPP_MIN_LOG_LEVEL": "2",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if self.model_url is None:
            env.update({"RASA_GPT3_LOCAL": "1", "RASA_GPT3_FAULTS": f"latency={self.latency},path=/v1/chat"})
        else:
            env.update({"OPENAI_BASE_URL": self.model_url, "OPENAI_API_KEY": "local"})
        env.update(extra)
        return env

    def start(self, stack: ExitStack, name: str, command: Sequence[str], env: Dict[str, str], ready: str) -> Server:
        """Starts a process (stopped when `stack` closes) and waits until it answers GET `ready`."""
        port = free_port()
        command = [part.replace("{port}", str(port)) for part in command]
        server = start_server(name, command, self.project, self.logs / f"{name}.log", f"http://127.0.0.1:{port}", env)
        stack.callback(server.stop)
        wait_ready(server, ready)
        self.started.append(server)
        return server

    def rasa(self, stack: ExitStack, name: str, endpoints: str, env: Dict[str, str], launcher=("-m", "rasa")) -> Server:
        """`rasa run --enable-api` on the GPT-only model."""
        command = [sys.executable, *launcher, *RASA_RUN.split(), "-m", str(self.archive), "--endpoints", endpoints]
        return self.start(stack, name, command, env, "/status")

    def nlu_server(self, stack: ExitStack, env: Dict[str, str]) -> Server:
        """`python -m rasa_gpt3.nlu_server` (what `rasa-gpt3 nlu serve` runs)."""
        command = [sys.executable, "-m", "rasa_gpt3.nlu_server", "--model", str(self.archive), "--port", "{port}"]
        return self.start(stack, "nlu_server", command, env, "/")

    def endpoints(self, name: str, text: str) -> str:
        """Writes an endpoints file into the project; returns its name."""
        (self.project / name).write_text(text, encoding="utf-8")
        return name


def wait_for_workers(server: Server, workers: int, timeout: float = 900) -> None:
    """Waits until each of `workers` Sanic workers has loaded the model (each loads it itself) and says so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.log.read_text(errors="replace").count("Rasa server is up and running") >= workers:
            return
        time.sleep(0.5)
    sys.exit(f"error: {workers} workers did not load the model within {timeout:g} s")


def realtime(servers: Sequence[Server]) -> None:
    """Every thread of `servers` and of their child processes to real-time priority (SCHED_FIFO 10)."""
    pending = [server.process.pid for server in servers]
    while pending:
        pid = pending.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                os.sched_setscheduler(int(task.name), os.SCHED_FIFO, os.sched_param(10))
                pending += [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue  # a thread that ended meanwhile


def setups(bench: Bench, args: argparse.Namespace, actions_url: str, redis_port: Optional[int]) -> List[tuple]:
    """(name, starter) per setup; a starter starts the processes on `stack` and returns Rasa's URL."""
    action = f'action_endpoint:\n  url: "{actions_url}"\n'
    plain = bench.endpoints("endpoints_bench.yml", action)

    def nlu_endpoints(url: str) -> str:
        return bench.endpoints("endpoints_bench_nlu.yml", f'{action}nlu:\n  url: "{url}"\n  timeout: 5\n')

    def redis_endpoints() -> str:
        return bench.endpoints(
            "endpoints_bench_redis.yml",
            (
                f"{action}tracker_store:\n  type: redis\n  url: 127.0.0.1\n  port: {redis_port}\n  db: 0\n"
                "lock_store:\n  type: rasa_gpt3.lock_store.AtomicRedisLockStore\n  url: 127.0.0.1\n"
                f"  port: {redis_port}\n  db: 1\n"
            ),
        )

    def as_is(stack: ExitStack) -> str:
        return bench.rasa(stack, "rasa_as_is", plain, bench.env()).url

    def with_nlu_server(stack: ExitStack) -> str:
        nlu = bench.nlu_server(stack, bench.env())
        return bench.rasa(stack, "rasa_nlu_server", nlu_endpoints(nlu.url), bench.env()).url

    def in_process(stack: ExitStack) -> str:
        return bench.rasa(stack, "rasa_in_process_pool", plain, bench.env(), launcher=("-c", IN_PROCESS_POOL)).url

    def workers(count: int, nlu: bool) -> Callable[[ExitStack], str]:
        def start(stack: ExitStack) -> str:
            if nlu:
                server = bench.nlu_server(stack, bench.env())
                endpoints = bench.endpoints(
                    "endpoints_bench_redis_nlu.yml",
                    Path(bench.project / redis_endpoints()).read_text()
                    + f'nlu:\n  url: "{server.url}"\n  timeout: 5\n',
                )
            else:
                endpoints = redis_endpoints()
            name = f"rasa_{count}_workers" + ("_nlu_server" if nlu else "")
            server = bench.rasa(stack, name, endpoints, bench.env(SANIC_WORKERS=str(count)))
            wait_for_workers(server, count)
            return server.url

        return start

    chosen = [
        ("Rasa 3.6 as it is: NLU inside the event loop", as_is),
        ("rasa run + NLU server (`nlu: url:`)", with_nlu_server),
    ]
    if args.compare_in_process:
        chosen.append(("not chosen: the pipeline on a thread pool inside Rasa (patched)", in_process))
    if redis_port is None:
        print("note: redis-server not found; the SANIC_WORKERS setups are left out", flush=True)
        return chosen
    for count in args.workers:
        chosen.append((f"SANIC_WORKERS={count} + Redis, NLU in each worker", workers(count, nlu=False)))
    chosen.append(("SANIC_WORKERS=2 + Redis + NLU server", workers(2, nlu=True)))
    return chosen


# ---------------------------------------------------------------- the action server


def action_request(domain: Dict[str, Any], sender: str, text: str) -> Dict[str, Any]:
    """What Rasa posts to the action server for action_gpt3_fallback after the GPT pipeline was unsure of `text`."""
    latest = {
        "text": text,
        "intent": {"name": "nlu_fallback", "confidence": 0.3},
        "entities": [],
        "intent_ranking": [],
        "gpt3": {"asked": True, "decided": False, "outcome": "ok"},
    }
    slots = {name: slot.get("initial_value") for name, slot in (domain.get("slots") or {}).items()}
    tracker = {
        "sender_id": sender,
        "slots": slots,
        "latest_message": latest,
        "paused": False,
        "followup_action": None,
        "active_loop": {},
        "latest_action_name": "action_listen",
        "events": [{"event": "action", "name": "action_listen"}, {"event": "user", "text": text, "parse_data": latest}],
    }
    return {
        "next_action": "action_gpt3_fallback",
        "sender_id": sender,
        "tracker": tracker,
        "domain": domain,
        "version": "3.6.21",
    }


def play_actions(row: Row, url: str, domain: Dict[str, Any], args: argparse.Namespace) -> None:
    """--single requests one after the other, then --conversations at once."""
    count = iter(range(10**6))

    def body(kind: str) -> Dict[str, Any]:
        number = next(count)
        return action_request(domain, f"action-{kind}-{number}", f"tell me a joke about banks, number {number}")

    def answered(result: Any) -> bool:
        return isinstance(result, dict) and bool(result.get("responses"))

    async def measure() -> None:
        async with _session() as session:
            await _post(session, f"{url}/webhook", body("warm-up"))  # the action loads its models on the first call
            for _ in range(args.single * args.messages):
                row.single.append(await _post(session, f"{url}/webhook", body("single"), answered))
            started, window_start = time.monotonic(), time.time()
            row.load = list(
                await asyncio.gather(
                    *(_post(session, f"{url}/webhook", body("load"), answered) for _ in range(args.conversations))
                )
            )
            row.wall, row.window = time.monotonic() - started, (window_start, time.time())

    asyncio.run(measure())
    row.lost = sum(1 for sample in row.load if not sample.answered)


# ---------------------------------------------------------------- main


def prepare(workdir: Path) -> tuple[Bench, Dict[str, str]]:
    """Copies example_bot, fine-tunes its models on the local backend and trains the GPT-only Rasa model."""
    from rasa_gpt3.local.embedded import stop_server
    from rasa_gpt3.settings import Settings

    project = workdir / "example_bot"
    shutil.copytree(
        REPO / "example_bot",
        project,
        ignore=shutil.ignore_patterns("models", "results", ".rasa", ".rasa_gpt3", "gpt3_models.yml", "__pycache__"),
    )
    logs = workdir / "logs"
    logs.mkdir()
    print(f"fine-tuning example_bot's models on the local backend ({project})", flush=True)
    models = fine_tune_models(project, lambda line: print(line, flush=True))
    stop_server(Settings(project_dir=project).local_state_dir)
    bench = Bench(project, Path(), 0.0, logs, workdir / "requests.log")
    print(f"rasa train --config {CONFIG}", flush=True)
    env = bench.env()
    env.pop("RASA_GPT3_FAULTS")
    bench.archive = rasa_train(project, project / CONFIG, project / "models", logs / "train.log", env)
    return bench, models


def start_model_server(stack: ExitStack, bench: Bench, models: Dict[str, str]) -> str:
    """`rasa-gpt3 local serve` on the project's state with the latency fault, its models loaded; its base URL."""
    import httpx

    env = bench.env()
    env.pop("RASA_GPT3_FAULTS")  # read on every request: with --faults as well, each call would wait twice
    state = bench.project / ".rasa_gpt3" / "local"
    spec = f"latency={bench.latency},path=/v1/chat"
    command = [sys.executable, "-m", "rasa_gpt3.cli", *"local serve --port {port}".split(), "--state", str(state)]
    server = bench.start(stack, "model_server", [*command, "--faults", spec], env, "/health")
    for model in models.values():  # a model loads on its first call: not inside a component's 2 s budget
        httpx.post(
            f"{server.url}/v1/chat/completions",
            timeout=300,
            headers={"Authorization": "Bearer local"},
            json={"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]},
        )
    return f"{server.url}/v1"


def start_redis(stack: ExitStack) -> Optional[int]:
    """A redis-server on a free port (nothing saved), or None when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    stack.callback(process.wait, 10)
    stack.callback(process.terminate)
    import redis

    for _ in range(100):
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return port
        except redis.RedisError:
            time.sleep(0.1)
    sys.exit("error: redis-server did not start")


def table(rows: List[Row], args: argparse.Namespace) -> str:
    """The markdown table."""
    lines = [
        f"| setup ({args.conversations} conversations x {args.messages} messages, model latency "
        f"{args.latency * 1000:.0f} ms) | one at a time p50 | p50 | p95 | max | p95 / one at a time | throughput "
        "| lost | twice | model calls at once |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if not row.load:
            lines.append(f"| {row.setup} | {row.note} |")
            continue
        single = statistics.median(sample.seconds for sample in row.single)
        load = [sample.seconds for sample in row.load]
        p95 = quantile(load, 0.95)
        lines.append(
            f"| {row.setup} | {single * 1000:,.0f} ms | {quantile(load, 0.5) * 1000:,.0f} ms | {p95 * 1000:,.0f} ms | "
            f"{max(load) * 1000:,.0f} ms | {p95 / single:.1f}x | {len(load) / row.wall:.1f} msg/s | {row.lost} | "
            f"{row.twice} | {row.at_once} |"
        )
    return "\n".join(lines)


@contextmanager
def measuring(servers: Sequence[Server], on: bool):
    """With `on`: `servers` and this thread (the load) at real-time priority for the block."""
    if on:
        realtime(servers)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    try:
        yield
    finally:
        if on:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs every setup and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20, help="conversations at once (default: 20)")
    parser.add_argument("--messages", type=int, default=3, help="messages per conversation (default: 3)")
    parser.add_argument("--single", type=int, default=4, help="conversations played one at a time (default: 4)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per model call (default: 0.2)")
    parser.add_argument("--workers", default="1,2,4", help="SANIC_WORKERS values (default: 1,2,4)")
    parser.add_argument(
        "--backend",
        choices=("embedded", "standalone"),
        default="embedded",
        help="the model: each process's embedded local backend, or one `local serve` for all",
    )
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="measure at real-time priority (SCHED_FIFO, root only): other work on the machine waits",
    )
    parser.add_argument(
        "--compare-in-process",
        action="store_true",
        help="also measure the pipeline on a thread pool inside Rasa (a patch, not shipped)",
    )
    parser.add_argument("--only", default=None, metavar="TEXT", help="run only the setups whose name contains TEXT")
    parser.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (logs, trained bot)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # Rasa's deprecation and domain warnings would bury the table
    args.workers = [int(count) for count in args.workers.split(",") if count.strip()]

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="rasa-gpt3-concurrency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started_load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average {started_load:.1f} at the start", flush=True)
    try:
        bench, models = prepare(workdir)
        bench.latency = args.latency
        texts, rows = Texts(), []
        with ExitStack() as shared:
            redis_port = start_redis(shared)
            if args.backend == "standalone":
                bench.model_url = start_model_server(shared, bench, models)
            # on another backend than the one that trained them, the action takes its models from the environment
            explicit = {f"RASA_GPT3_{task.upper()}_MODEL": model for task, model in models.items()}
            command = [sys.executable, "-m", "rasa_sdk", *"--actions actions --port {port}".split()]
            env = bench.env(**(explicit if bench.model_url else {}))
            actions = bench.start(shared, "action_server", command, env, "/health")
            if args.realtime:
                realtime(bench.started)  # the action server and the standalone model, shared by every setup
            for number, (name, starter) in enumerate(setups(bench, args, f"{actions.url}/webhook", redis_port)):
                if args.only and args.only not in name:
                    continue
                print(f"\n== {name}", flush=True)
                row = Row(name)
                bench.started = []
                with ExitStack() as stack:
                    url = starter(stack)
                    with measuring(bench.started, args.realtime):
                        play(row, url, texts, args, prefix=f"setup{number}")
                row.at_once = most_at_once(bench.request_log, args.latency, row.window)
                rows.append(row)
                print(table([row], args).splitlines()[-1], flush=True)
            if not args.only or "action" in args.only:
                from rasa.shared.core.domain import Domain

                print("\n== action server", flush=True)
                row = Row(f"action server: action_gpt3_fallback, {args.conversations} requests at once")
                with measuring([], args.realtime):
                    play_actions(row, actions.url, Domain.load(bench.project / "domain.yml").as_dict(), args)
                row.at_once = most_at_once(bench.request_log, args.latency, row.window)
                rows.append(row)
        print(
            f"\nmodel: {args.backend} local backend; {'real-time priority while measuring; ' if args.realtime else ''}"
            f"load average {started_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; logs in "
            f"{workdir / 'logs'}\n"
        )
        print(table(rows, args))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
