"""`validate`: one test per check (data that trips it, data that doesn't), the report, --json and --fix."""

from __future__ import annotations

import json

import pytest

from rasa_gpt3 import prompts
from rasa_gpt3.cli import main
from rasa_gpt3.data.validation import CHECKS, UnparsedLine, read_jsonl, repair_records, validate_file, validate_records
from rasa_gpt3.errors import DataError


def chat(text, answer):
    return prompts.intent_record(text, answer, "chat")


def comp(text, answer):
    return prompts.intent_record(text, answer, "completion")


# 100 examples for each of two single-token labels: trips nothing
GOOD_CHAT = [chat(f"message number {i}", "yes" if i % 2 else "no") for i in range(200)]
GOOD_COMP = [comp(f"message number {i}", "yes" if i % 2 else "no") for i in range(200)]
GENERATION = [comp(f"question {i}", f"a long and different answer number {i}") for i in range(120)]


def _with(records, index, record):
    changed = list(records)
    changed[index] = record
    return changed


def _raw_comp(prompt, completion):
    return {"prompt": prompt, "completion": completion}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
    },
}


def weather_call(i, call_id="call_1"):
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_current_weather", "arguments": json.dumps({"location": f"City {i}"})},
    }


def tool_records(n):
    """Tool-calling records as OpenAI's fine-tuning guide shows them: a call to learn, or a call, its result and
    the answer; parallel calls; and the older `functions` / `function_call` form."""
    records = []
    for i in range(n):
        if i % 4 == 0:  # the call is what the model learns (content null)
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": f"What is the weather in City {i}?"},
                        {"role": "assistant", "content": None, "tool_calls": [weather_call(i)]},
                    ],
                    "tools": [WEATHER_TOOL],
                    "parallel_tool_calls": False,
                }
            )
        elif i % 4 == 1:  # call, result, answer; the call without a content key at all, and weight 0
            records.append(
                {
                    "messages": [
                        {"role": "system", "content": "You are a weather bot."},
                        {"role": "user", "content": f"Weather in City {i}?"},
                        {"role": "assistant", "tool_calls": [weather_call(i)], "weight": 0},
                        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"celsius": i})},
                        {"role": "assistant", "content": f"It is {i} degrees in City {i}."},
                    ],
                    "tools": [WEATHER_TOOL],
                }
            )
        elif i % 4 == 2:  # two calls at once
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": f"Weather in City {i} and City {i + 1}?"},
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [weather_call(i, "call_a"), weather_call(i + 1, "call_b")],
                        },
                    ],
                    "tools": [WEATHER_TOOL],
                    "parallel_tool_calls": True,
                }
            )
        else:  # the older function calling form
            records.append(
                {
                    "messages": [
                        {"role": "user", "content": f"How warm is City {i}?"},
                        {
                            "role": "assistant",
                            "function_call": {
                                "name": "get_current_weather",
                                "arguments": json.dumps({"location": f"City {i}"}),
                            },
                        },
                    ],
                    "functions": [WEATHER_TOOL["function"]],
                }
            )
    return records


TOOLS = tool_records(40)


def _unanswered_tool_message(record):
    messages = [dict(m) for m in record["messages"]]
    messages[3] = {**messages[3], "tool_call_id": "call_nobody_made"}
    return {**record, "messages": messages}


# check name -> (records that trip it, records that do not, options for validate_records, severity)
CASES = {
    "json_lines": (_with(GOOD_CHAT, 3, UnparsedLine("not JSON (Expecting value at column 1)")), GOOD_CHAT, {}, "error"),
    "format": (GOOD_CHAT[:150] + GOOD_COMP[150:], GOOD_CHAT, {}, "error"),
    "missing_keys": (_with(GOOD_COMP, 3, {"prompt": "only a prompt\n\n###\n\n"}), GOOD_COMP, {}, "error"),
    "extra_keys": (_with(GOOD_CHAT, 0, {**GOOD_CHAT[0], "id": 7}), GOOD_CHAT, {}, "warning"),
    "message_structure": (
        _with(
            GOOD_CHAT, 1, {"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "yes"}]}
        ),
        GOOD_CHAT,
        {},
        "error",
    ),
    "tool_calls": (_with(TOOLS, 5, _unanswered_tool_message(TOOLS[5])), TOOLS, {}, "error"),
    "assistant_message": (
        _with(GOOD_CHAT, 2, {"messages": [{"role": "user", "content": "hi"}]}),
        GOOD_CHAT,
        {},
        "error",
    ),
    "empty_completions": (_with(GOOD_COMP, 4, _raw_comp("empty answer\n\n###\n\n", " END")), GOOD_COMP, {}, "error"),
    "duplicates": (GOOD_CHAT + [GOOD_CHAT[5]], GOOD_CHAT, {}, "warning"),
    "example_count": (GOOD_CHAT[:5], GOOD_CHAT, {}, "error"),
    "token_limit": (
        _with(GOOD_COMP, 0, comp("word " * 17000, "yes")),
        GOOD_COMP,
        {"base_model": "babbage-002"},
        "error",
    ),
    "special_tokens": (_with(GOOD_CHAT, 0, chat("hi <|endoftext|> there", "yes")), GOOD_CHAT, {}, "error"),
    "unicode": (_with(GOOD_CHAT, 0, chat("broken \ud800 text", "yes")), GOOD_CHAT, {}, "error"),
    "prompt_separator": (
        [_raw_comp(f"question {i}", r["completion"]) for i, r in enumerate(GENERATION)],
        GENERATION,
        {},
        "warning",
    ),
    "completion_leading_space": (
        _with(GENERATION, 0, _raw_comp("question 0\n\n###\n\n", "answer END")),
        GENERATION,
        {},
        "warning",
    ),
    "completion_stop": (
        [_raw_comp(r["prompt"], f" answer {i}") for i, r in enumerate(GENERATION)],
        GENERATION,
        {},
        "warning",
    ),
    "capitalisation": (
        [chat(f"MESSAGE NUMBER {i} IN CAPITALS", r["messages"][-1]["content"]) for i, r in enumerate(GOOD_CHAT)],
        GOOD_CHAT,
        {},
        "warning",
    ),
    "label_conflicts": (GOOD_CHAT + [chat("message number 0", "yes")], GOOD_CHAT, {}, "warning"),
    "examples_per_label": (GOOD_CHAT + [chat("a lonely example", "maybe")], GOOD_CHAT, {}, "warning"),
    "class_imbalance": (GOOD_CHAT + [chat(f"one of a few {i}", "maybe") for i in range(8)], GOOD_CHAT, {}, "warning"),
    "single_token_labels": (
        [chat(r["messages"][1]["content"], r["messages"][-1]["content"] + "_check_recipients_now") for r in GOOD_CHAT],
        GOOD_CHAT,
        {},
        "warning",
    ),
}


def test_every_check_has_a_case():
    assert {check.__name__[len("check_") :] for check in CHECKS} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_check_trips_on_bad_data_and_not_on_good(name):
    bad, good, options, severity = CASES[name]
    tripped = [f for f in validate_records(bad, **options).findings if f.check == name]
    assert tripped, name
    assert {f.severity for f in tripped} == {severity}
    assert all(f.message and f.fix for f in tripped if f.severity == "error")
    clean = validate_records(good, **options)
    assert not [f for f in clean.findings if f.check == name], clean.findings


def test_tool_calling_records_as_openai_documents_them_are_accepted(tmp_path):
    report = validate_file(_write(tmp_path / "tools.jsonl", TOOLS))
    assert report.ok, report.render()
    assert report.stats["format"] == "chat" and report.stats["records"] == 40
    assert not [f for f in report.findings if f.check in ("extra_keys", "message_structure", "duplicates")]
    # calls and tool definitions count towards the tokens, so the context limit and the cost see them
    without_tools = [{"messages": [m for m in r["messages"] if m.get("content")]} for r in TOOLS]
    assert report.stats["tokens"]["total"] > validate_records(without_tools).stats["tokens"]["total"] + 40 * 20
    repaired, actions = repair_records(TOOLS)
    assert repaired == TOOLS and actions == []


@pytest.mark.parametrize(
    "broken, problem",
    [
        (lambda r: {**r, "tools": [{"type": "function"}]}, "`tools` is not a list"),
        (lambda r: {**r, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        (
            lambda r: {
                **r,
                "messages": [
                    r["messages"][0],
                    {
                        **r["messages"][1],
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "get_current_weather", "arguments": {"x": 1}},
                            }
                        ],
                    },
                ],
            },
            "tool_calls is not a list",
        ),
        (
            lambda r: {**r, "messages": [{**r["messages"][0], "tool_calls": [weather_call(0)]}, r["messages"][1]]},
            "a user message has tool_calls",
        ),
        (lambda r: {**r, "messages": r["messages"] + [{"role": "tool", "content": "12"}]}, "no tool_call_id"),
    ],
)
def test_malformed_tool_calls_are_errors_naming_the_problem(broken, problem):
    records = _with(TOOLS, 4, broken(TOOLS[4]))
    found = [f for f in validate_records(records).findings if f.check == "tool_calls"]
    assert len(found) == 1 and found[0].lines == [5] and problem in found[0].message, found


def test_a_record_that_ends_with_a_tool_message_has_nothing_to_learn():
    record = {**TOOLS[1], "messages": TOOLS[1]["messages"][:4]}
    found = [f for f in validate_records(_with(TOOLS, 1, record)).findings if f.check == "assistant_message"]
    assert found and found[0].lines == [2]


def test_findings_carry_line_numbers_and_the_report_counts():
    records = _with(GOOD_COMP, 4, _raw_comp("empty answer\n\n###\n\n", " END")) + [GOOD_COMP[7]]
    report = validate_records(records, lines=[n * 2 for n in range(1, len(records) + 1)])
    empty = [f for f in report.findings if f.check == "empty_completions"][0]
    duplicate = [f for f in report.findings if f.check == "duplicates"][0]
    assert empty.lines == [10] and duplicate.lines == [2 * len(records)]
    assert not report.ok and report.summary()["errors"] == 1
    assert report.stats["classification"] is True and report.stats["labels"] == 2
    assert report.stats["tokens"]["total"] > 0 and report.stats["estimate"]["epochs"] >= 1
    text = report.render()
    assert "error [empty_completions]" in text and "fix:" in text and "errors: 1," in text


def _write(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_cli_validate_clean_file_exits_zero_with_json(tmp_path, capsys):
    path = _write(tmp_path / "good.jsonl", GOOD_COMP)
    assert main(["validate", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == 0 and report["format"] == "completion" and report["records"] == 200
    assert report["base_model"] == "babbage-002"
    assert report["estimate"]["training_cost_usd"] > 0


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_cli_validate_json_reports_a_file_it_cannot_read(tmp_path, capsys, which):
    path = tmp_path / "nothing.jsonl" if which == "missing" else tmp_path
    assert main(["validate", str(path), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["source"] == str(path) and report["errors"] == 1 and report["records"] == 0
    (finding,) = report["findings"]
    assert finding["check"] == "file" and finding["severity"] == "error"
    assert ("file not found" if which == "missing" else "is a directory") in finding["message"]
    # the one line on stderr stays, as without --json
    assert captured.err.strip().splitlines() == [f"error: {finding['message']}"]


def test_cli_validate_errors_exit_one(tmp_path, capsys):
    path = _write(tmp_path / "bad.jsonl", CASES["assistant_message"][0])
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "error [assistant_message]" in out and "(lines 3)" in out


def test_cli_fix_writes_a_repaired_copy(tmp_path, capsys):
    records = [_raw_comp(f"question {i}", f"answer {i}") for i in range(30)]
    records += [
        records[0],
        _raw_comp("nothing here", "   "),
        {**records[1], "note": "x"},
        _raw_comp("a <|endoftext|> b", "answer x"),
    ]
    path = _write(tmp_path / "raw.jsonl", records)
    fixed = tmp_path / "fixed.jsonl"
    assert main(["validate", str(path), "--fix", str(fixed)]) == 0  # the repaired copy has no errors
    out = capsys.readouterr().out
    assert "error [empty_completions]" in out
    assert "dropped duplicate records: 2 (lines 31, 33)" in out and "dropped records with an empty answer" in out
    assert "added the separator" in out and "added the stop sequence" in out and "removed special tokens" in out
    repaired = read_jsonl(fixed).records
    assert len(repaired) == 31  # the record with an extra key is a duplicate once the key is gone
    assert all(r["prompt"].endswith(prompts.SEPARATOR) for r in repaired)
    assert all(r["completion"].startswith(" ") and r["completion"].endswith(prompts.STOP) for r in repaired)
    assert all(set(r) == {"prompt", "completion"} for r in repaired)
    assert validate_file(fixed).ok


def test_repair_drops_unusable_chat_records():
    records = CASES["message_structure"][0][:20] + CASES["unicode"][0][:3]
    repaired, actions = repair_records(records)
    assert len(repaired) == 20  # 19 + 1: one bad role, one lone surrogate, one duplicate dropped
    assert any("malformed" in a for a in actions) and any("UTF-8" in a for a in actions)


def test_read_jsonl_keeps_unreadable_lines_in_place_and_fails_only_for_a_missing_file(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"prompt": "a", "completion": " b"}\n\n[1, 2\n{"prompt": "caf\xe9"}\n' + b"[" * 100000 + b"\n")
    parsed = read_jsonl(path)
    assert parsed.lines == [1, 3, 4, 5]
    assert parsed.records[0] == {"prompt": "a", "completion": " b"}
    assert [type(r) for r in parsed.records[1:]] == [UnparsedLine] * 3
    assert parsed.records[1].problem.startswith("not JSON (")
    assert parsed.records[2].problem == "invalid UTF-8 at byte 16 of the line"
    assert parsed.records[3].problem == "not JSON (nested too deeply)"
    with pytest.raises(DataError, match="file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    path.write_text('\n{"prompt": "a", "completion": " b"}\n\n')
    parsed = read_jsonl(path)
    assert parsed.lines == [2] and len(parsed.records) == 1


def test_cli_validate_reports_every_problem_with_unreadable_lines_among_them(tmp_path, run_cli_many):
    """Lines that are not JSON or not UTF-8 do not stop the check: every finding is reported, also with --json."""
    lines = [json.dumps(r).encode() for r in GOOD_COMP[:40]]
    lines[2] = b'{"prompt": "c", "completion"'  # line 3: cut short
    lines[6] = b'{"prompt": "caf\xe9", "completion": " yes END"}'  # line 7: Latin-1, not UTF-8
    lines[9] = json.dumps({"prompt": "no answer\n\n###\n\n"}).encode()  # line 10: parses, but no completion
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    fixed = tmp_path / "fixed.jsonl"
    as_json, as_text, fixing = run_cli_many(
        [
            ["validate", str(path), "--json"],
            ["validate", str(path)],
            ["validate", str(path), "--json", "--fix", str(fixed)],
        ],
        tmp_path,
    )
    for result in (as_json, as_text, fixing):
        assert "Traceback" not in result.stderr and "error:" not in result.stderr, result.stderr
    assert as_json.returncode == as_text.returncode == 1
    report = json.loads(as_json.stdout)
    found = {f["check"]: f for f in report["findings"]}
    assert found["json_lines"]["lines"] == [3, 7] and found["json_lines"]["severity"] == "error"
    assert (
        "line 3: not JSON" in found["json_lines"]["message"]
        and "line 7: invalid UTF-8" in found["json_lines"]["message"]
    )
    assert found["missing_keys"]["lines"] == [10]
    assert "format" not in found  # an unreadable line is reported once, as what it is
    assert report["records"] == 38 and report["unparsed_lines"] == 2 and report["errors"] == 2
    assert "error [json_lines]" in as_text.stdout and "(lines 3, 7)" in as_text.stdout
    assert "error [missing_keys]" in as_text.stdout and "(lines 10)" in as_text.stdout
    assert fixing.returncode == 0, fixing.stdout  # the repaired copy has no errors
    fix = json.loads(fixing.stdout)["fix"]
    assert fix["records"] == 37 and any(
        a.startswith("dropped lines that are not JSON: 2 (lines 3, 7)") for a in fix["actions"]
    )
    assert validate_file(fixed).ok


def test_exported_files_validate_clean(travel_project, tmp_path):
    from rasa_gpt3.data.export import export_task, write_export

    exported = export_task("intent", travel_project.nlu, fmt="completion")
    task_dir = write_export(exported, tmp_path)
    report = validate_file(task_dir / "train.jsonl")
    assert report.ok and report.stats["format"] == "completion"
    assert not [f for f in report.findings if f.check == "single_token_labels"]


def _near_intent_shape(i):
    """Records that look like export's intent records but differ in one place the fast path must notice."""
    good = chat(f"near miss {i}", "yes")
    system, user, assistant = good["messages"]
    return [
        {"messages": [system, user, {**assistant, "name": "bot"}]},
        {"messages": [system, user, {**assistant, "content": None}]},
        {
            "messages": [system, user, {"role": "assistant", "tool_calls": [weather_call(i)], "content": None}],
            "tools": [WEATHER_TOOL],
        },
        {"messages": [user, system, assistant]},
        {"messages": [{**system, "content": 7}, user, assistant]},
        {"messages": [system, user, assistant], "id": i},
        {"messages": [system, {"role": "user", "text": "no content key"}, assistant]},
        {"messages": [system, user]},
        {"messages": [system, user, assistant, assistant]},
        {"messages": [system, "a string message", assistant]},
        {"messages": "not a list"},
        [system, user, assistant],
        "a string",
    ]


def test_validations_fast_path_and_full_analysis_agree_on_every_record_of_a_file(travel_project, tmp_path):
    from rasa_gpt3.data.export import export_task
    from rasa_gpt3.data.validation import _intent_shape_parts, _record_parts

    records = []
    for task in ("intent", "entities"):
        exported = export_task(task, travel_project.nlu, fmt="chat")
        records += exported.train + exported.valid
    records += GOOD_CHAT[:20] + GOOD_COMP[:20] + TOOLS + [r for i in range(3) for r in _near_intent_shape(i)]
    records += [r for bad, _, _, _ in CASES.values() for r in bad[:3] if type(r) is not UnparsedLine]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # ASCII escapes keep the lone surrogate
    parsed = read_jsonl(path)
    assert len(parsed.records) == len(records)
    fast_hits = 0
    for line, record in zip(parsed.lines, parsed.records):
        fast = _intent_shape_parts(record)
        if fast is not None:
            fast_hits += 1
            assert fast == _record_parts(record), (line, record)
    assert fast_hits >= 40  # export's records and GOOD_CHAT took the fast path
    assert validate_file(path).findings  # and the file as a whole is checked (it has errors)


@pytest.mark.parametrize("task, fmt", [("intent", "chat"), ("intent", "completion"), ("entities", "chat")])
def test_exports_own_check_agrees_with_checking_its_written_file(travel_project, tmp_path, task, fmt):
    """Export checks its records with its own keys and token counts; read back from disk they give the same report."""
    from rasa_gpt3.data.export import export_task

    exported = export_task(task, travel_project.nlu, fmt=fmt)
    path = tmp_path / "both.jsonl"
    path.write_text(exported.jsonl("train") + exported.jsonl("valid"), encoding="utf-8")
    parsed = read_jsonl(path)
    from_file = validate_records(
        parsed.records,
        fmt=fmt,
        base_model=exported.base_model,
        lines=parsed.lines,
        keys=parsed.texts,
        classification=task == "intent",
        training_count=len(exported.train),
        codec=exported.codec,
        source=exported.report.source,
    )
    assert [f.to_json() for f in from_file.findings] == [f.to_json() for f in exported.report.findings]
    assert from_file.stats == exported.report.stats
