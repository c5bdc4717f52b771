"""The demo's command line on bad input, its DIET-only config, and how it reads a turn from tracker events."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from rasa_gpt3.demo import (
    DIET,
    FAILURE,
    GENERATED,
    GPT_RECLASSIFIED,
    GPT_ROUTING,
    describe_turn,
    diet_only_config,
    format_turn,
    load_conversations,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_BOT = REPO / "example_bot"


def _demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rasa_gpt3.demo", *args], capture_output=True, text=True, timeout=120)


def test_demo_on_a_directory_that_is_no_bot_is_one_line_and_exit_1(tmp_path):
    result = _demo(str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "no config.yml" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_demo_with_a_broken_conversation_file_is_one_line_and_exit_1(tmp_path):
    bot = tmp_path / "bot"
    shutil.copytree(EXAMPLE_BOT, bot, ignore=shutil.ignore_patterns("models", ".rasa", ".rasa_gpt3", "results"))
    (bot / "demo_conversation.yml").write_text("conversations:\n  - title: x\n    messages: []\n", encoding="utf-8")
    result = _demo(str(bot))
    assert result.returncode == 1
    assert "demo_conversation.yml: conversation 1 needs `messages:`" in result.stderr
    assert result.stderr.count("\n") == 1


def test_example_bots_conversations_use_both_pipelines():
    conversations = load_conversations(EXAMPLE_BOT)
    assert {c["pipeline"] for c in conversations} == {"bot", "diet_only"}


def test_diet_only_config_drops_the_gpt_components_and_routes_unsure_messages_to_the_action(tmp_path):
    out = diet_only_config(EXAMPLE_BOT, tmp_path / "config_diet_only.yml")
    config = yaml.safe_load(out.read_text(encoding="utf-8"))
    names = [component["name"] for component in config["pipeline"]]
    assert "DIETClassifier" in names and not any(name.startswith("rasa_gpt3.") for name in names)
    fallback = next(c for c in config["pipeline"] if c["name"] == "FallbackClassifier")
    assert fallback["threshold"] == 0.7  # example_bot's only_below_confidence
    assert config["policies"] == yaml.safe_load((EXAMPLE_BOT / "config.yml").read_text())["policies"]


def _user(intent, confidence, **extra):
    return {"event": "user", "parse_data": {"intent": {"name": intent, "confidence": confidence}, **extra}}


def test_a_turn_decided_by_diet():
    report = describe_turn(
        "hello", ["Hi"], [_user("greet", 0.98, gpt3={"asked": False}), {"event": "bot", "text": "Hi"}]
    )
    assert (report.decided_by, report.intent, report.confidence) == (DIET, "greet", 0.98)


def test_a_turn_decided_by_routing_mode():
    events = [
        _user(
            "block_card",
            0.83,
            gpt3={"asked": True, "decided": True, "previous_intent": {"name": "block_card", "confidence": 0.49}},
        )
    ]
    report = describe_turn("kill my debit card now", ["blocked"], events)
    assert report.decided_by == GPT_ROUTING and "DIET said block_card 0.49" in report.detail


def test_a_turn_reclassified_by_the_action():
    events = [
        _user("nlu_fallback", 0.7),
        {"event": "action", "name": "action_gpt3_fallback"},
        {"event": "rewind"},
        {"event": "action", "name": "action_listen"},
        _user(
            "block_card",
            0.89,
            gpt3_fallback={"reclassified": True, "previous_intent": {"name": "nlu_fallback", "confidence": 0.7}},
            entities=[{"entity": "card_type", "value": "credit", "extractor": "DIETClassifier"}],
        ),
    ]
    report = describe_turn("my visa is gone", ["blocked"], events)
    assert (report.decided_by, report.intent) == (GPT_RECLASSIFIED, "block_card")
    assert report.entities == ["card_type=credit (DIETClassifier)"]
    assert "decided by: GPT re-classification" in format_turn(report)


def test_turns_answered_by_the_action():
    generated = [
        _user("nlu_fallback", 0.5),
        {
            "event": "bot",
            "text": "Sorry, I don't know.",
            "metadata": {"rasa_gpt3": {"source": "generated", "model": "ft:m"}},
        },
    ]
    assert describe_turn("mortgages?", ["Sorry, I don't know."], generated).decided_by == GENERATED
    failed = [
        _user("nlu_fallback", 0.5),
        {"event": "bot", "text": "Sorry", "metadata": {"rasa_gpt3": {"source": "failure", "reason": "server_error"}}},
    ]
    report = describe_turn("mortgages?", ["Sorry"], failed)
    assert report.decided_by == FAILURE and "server_error" in report.detail
