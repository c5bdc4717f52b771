"""Checks of fine-tune JSONL data: what OpenAI's legacy `prepare_data` and its chat data guide checked, and more.

Each check is a small named function that looks at the parsed records and returns findings (error or warning,
a message, a suggested fix, the line numbers). `validate_records` runs them all; `validate_file` first parses a
JSONL file (a line that is not JSON or not UTF-8 is kept as an `UnparsedLine` and reported with the rest);
`repair_records` is what `--fix` does. Rasa-aware checks apply to classification data (labels): the same text
with different labels, examples per label against Rasa's minimum of 2 and the ~100-per-class guidance, class
imbalance, and labels that are not one token of the base model's tokenizer (the classifier reads one token's
logprobs).

Severity: an error is something the fine-tuning API rejects or that silently ruins training (missing keys,
no assistant answer, empty answers, examples over the context limit, special tokens, text that is not valid
UTF-8, fewer than 10 examples). Everything else is a warning.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from rasa_gpt3 import prompts
from rasa_gpt3.atomic_files import write_atomic
from rasa_gpt3.data.base_model_spec import cost_text
from rasa_gpt3.data.base_models import BaseModel, default_base_model, default_epochs, resolve_base_model
from rasa_gpt3.data.gc_pause import paused_garbage_collection
from rasa_gpt3.data.labels import one_token_of
from rasa_gpt3.data.tokens import count_record_tokens, get_encoding
from rasa_gpt3.data.tool_calls import TOOL_KEYS, makes_a_call, message_text, tool_use_problems
from rasa_gpt3.errors import DataError

MIN_EXAMPLES = 10  # the fine-tuning API refuses fewer
RECOMMENDED_PER_LABEL = 100  # OpenAI's guidance for classification
RASA_MIN_PER_LABEL = 2  # Rasa warns below this and the split cannot put the label in both files
IMBALANCE_RATIO = 10
CAPITALISED_SHARE = 1 / 3  # the legacy tool's threshold for "mostly upper case"
CHAT_TOP_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}
CHAT_MESSAGE_KEYS = {"role", "content", "name", "weight", "function_call", "tool_calls", "tool_call_id"}
CHAT_ROLES = {"system", "user", "assistant", "tool", "function"}
COMPLETION_KEYS = {"prompt", "completion"}
_TOOL_TOP_KEYS = set(TOOL_KEYS)
_TOOL_MESSAGE_KEYS = {"tool_calls", "function_call", "tool_call_id"}
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_LETTERS = _UPPER + bytes(range(ord("a"), ord("z") + 1))


@dataclass
class Finding:
    """One problem a check found: severity (error/warning), the check's name, message, fix, and line numbers."""

    check: str
    severity: str
    message: str
    fix: str = ""
    lines: List[int] = field(default_factory=list)

    def to_json(self) -> Dict[str, Any]:
        """The finding as a JSON-ready dict."""
        return {
            "check": self.check,
            "severity": self.severity,
            "message": self.message,
            "fix": self.fix,
            "lines": list(self.lines),
        }


@dataclass
class ValidationReport:
    """All findings for one file or record list, with counts, tokens and the cost estimate."""

    source: str
    findings: List[Finding] = field(default_factory=list)
    stats: Dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> List[Finding]:
        """The findings of severity error."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> List[Finding]:
        """The findings of severity warning."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def summary(self) -> Dict[str, Any]:
        """Counts of errors and warnings and the checks that raised them."""
        return {
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "checks": sorted({f.check for f in self.findings}),
        }

    def summary_lines(self) -> List[str]:
        """One line with the counts, then one line per finding (what `export` prints)."""
        lines = [f"validation: errors {len(self.errors)}, warnings {len(self.warnings)}"]
        lines.extend(f"{f.severity} [{f.check}]: {f.message}" for f in self.findings)
        return lines

    def to_json(self) -> Dict[str, Any]:
        """The whole report as a JSON-ready dict (what `validate --json` prints)."""
        return {
            "source": self.source,
            **self.stats,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "findings": [f.to_json() for f in self.findings],
        }

    def render(self) -> str:
        """The human report: what the data is, tokens and cost, then each finding with its fix and lines."""
        s = self.stats
        out = [
            f"{self.source}: {s.get('records', 0):,} records"
            + (
                f" and {s['unparsed_lines']:,} unreadable line{'s' if s['unparsed_lines'] != 1 else ''}"
                if s.get("unparsed_lines")
                else ""
            )
            + f", {s.get('format') or 'unknown'} format"
            + (f", classification with {s['labels']} labels" if s.get("classification") else "")
        ]
        tokens, estimate = s.get("tokens"), s.get("estimate")
        if tokens and estimate:
            out.append(
                f"tokens: {tokens['total']:,} in total, max {tokens['max_per_record']:,} per record "
                f"(limit {tokens['context_limit']:,}); {s['base_model']}: {estimate['epochs']} epochs, "
                f"{estimate['trained_tokens']:,} trained tokens, "
                + cost_text(estimate["training_cost_usd"], estimate.get("local", False))
            )
        for finding in self.findings:
            where = ""
            if finding.lines:
                shown = ", ".join(str(n) for n in finding.lines[:10])
                more = f" and {len(finding.lines) - 10} more" if len(finding.lines) > 10 else ""
                where = f" (lines {shown}{more})"
            out.append(f"{finding.severity} [{finding.check}]: {finding.message}{where}")
            if finding.fix:
                out.append(f"  fix: {finding.fix}")
        out.append(f"errors: {len(self.errors)}, warnings: {len(self.warnings)}")
        return "\n".join(out)


# ---------------------------------------------------------------- the data the checks look at


@dataclass(frozen=True)
class UnparsedLine:
    """A line of a JSONL file that is not UTF-8 or not JSON, kept in place of its record; `problem` says why."""

    problem: str


# Structural problems of one record, found in a single pass over the records (bit flags).
MISSING_KEYS = 1
TOP_EXTRA = 2
MESSAGE_EXTRA = 4
MESSAGE_NOT_OBJECT = 8
BAD_ROLE = 16
BAD_CONTENT = 32
NO_ASSISTANT = 64
BAD_TOOL_USE = 128
_MALFORMED = MISSING_KEYS | MESSAGE_NOT_OBJECT | BAD_ROLE | BAD_CONTENT | NO_ASSISTANT | BAD_TOOL_USE


@dataclass
class CheckData:
    """Parsed records plus what every check needs, computed in one pass (the checks must stay fast at 100k)."""

    records: List[Any]
    lines: List[int]
    fmt: Optional[str]
    model: BaseModel
    encoding: Any
    kinds: List[Optional[str]]  # "chat", "completion" or None per record
    flags: List[int]  # the structural problem bits above
    prompt_texts: List[Optional[str]]  # None for malformed records
    answers: List[Optional[str]]
    keys: List[str]
    token_counts: List[int]
    classification: bool
    training_count: int
    codec: Any = None

    _cache: Dict[str, Any] = field(default_factory=dict, repr=False)

    # The views below take a C-level shortcut when every record is well formed (the usual case, and always for
    # export's own records): 100,000 records must be checked in a fraction of a second.

    def all_wellformed(self) -> bool:
        """True when no record has a structural problem."""
        if "all_wellformed" not in self._cache:
            self._cache["all_wellformed"] = not any(self.flags) and None not in self.prompt_texts
        return self._cache["all_wellformed"]

    def good(self) -> List[int]:
        """Indices of well-formed records."""
        if "good" not in self._cache:
            self._cache["good"] = (
                list(range(len(self.records)))
                if self.all_wellformed()
                else [i for i, text in enumerate(self.prompt_texts) if text is not None]
            )
        return self._cache["good"]

    def flagged(self, flag: int) -> List[int]:
        """Indices of the records with a structural problem."""
        if "flagged" not in self._cache:
            self._cache["flagged"] = [i for i, bits in enumerate(self.flags) if bits] if any(self.flags) else []
        return [i for i in self._cache["flagged"] if self.flags[i] & flag]

    def kind_counts(self) -> Counter:
        """How many records there are of each format."""
        if "kinds" not in self._cache:
            counts = Counter(self.kinds)
            counts.pop(None, None)
            self._cache["kinds"] = counts
        return self._cache["kinds"]

    def label_counts(self) -> Counter:
        """Examples per label (classification data)."""
        if "label_counts" not in self._cache:
            if self.all_wellformed():
                counts = Counter(self.answers)
                counts.pop("", None)
            else:
                counts = Counter(label for _, label in self.labelled())
            self._cache["label_counts"] = counts
        return self._cache["label_counts"]

    def labelled(self) -> List[Tuple[int, str]]:
        """(index, answer) of the well-formed records with a non-empty answer: the labels of classification data."""
        if "labelled" not in self._cache:
            answers = self.answers
            self._cache["labelled"] = [(i, answers[i]) for i in self.good() if answers[i]]
        return self._cache["labelled"]

    def good_texts(self, side: str) -> List[str]:
        """The prompt texts (`side` = "prompts") or answers of the well-formed records."""
        values = self.prompt_texts if side == "prompts" else self.answers
        if self.all_wellformed():
            return values
        return [values[i] or "" for i in self.good()]

    def joined_keys(self) -> str:
        """All records' exact texts as one string (for substring checks done once instead of per record)."""
        if "joined_keys" not in self._cache:
            self._cache["joined_keys"] = "\n".join(self.keys)
        return self._cache["joined_keys"]


_Parts = Tuple[Optional[str], int, Optional[str], Optional[str]]  # kind, structural flags, prompt text, answer


def _intent_shape_parts(record: Any) -> Optional[_Parts]:
    """The fast path for the shape prompts.intent_record/entities_record build (system, user, assistant with text).

    It gives what `_record_parts` gives, at a fraction of the cost; None for any other shape.
    """
    try:
        if len(record) == 1:
            system, user, assistant = record["messages"]
            if (
                system["role"] == "system"
                and user["role"] == "user"
                and assistant["role"] == "assistant"
                and len(system) == 2
                and len(user) == 2
                and len(assistant) == 2
            ):
                text, answer = user["content"], assistant["content"]
                if type(text) is str and type(answer) is str and type(system["content"]) is str:
                    return "chat", 0, text, answer
    except (KeyError, TypeError, ValueError):
        pass  # not that shape: _analyse says what is wrong, if anything
    return None


def _record_parts(record: Any) -> _Parts:
    """The full analysis of one record: its format, structural problems, prompt text and answer (None if malformed)."""
    kind, bits = _analyse(record)
    if kind is None or bits & _MALFORMED:
        return kind, bits, None, None
    if kind == "chat" and not all(type(m.get("content")) is str for m in record["messages"]):
        record = {"messages": [{"role": m["role"], "content": message_text(m)} for m in record["messages"]]}
    return kind, bits, prompts.record_prompt_text(record), prompts.record_answer(record)


def _analyse(record: Any) -> Tuple[Optional[str], int]:
    """The format of one record and its structural problems."""
    if type(record) is not dict:
        return None, 0
    messages = record.get("messages")
    if messages is not None or "messages" in record:
        flags = TOP_EXTRA if len(record) > 1 and set(record) - CHAT_TOP_KEYS else 0
        if type(messages) is not list or not messages:
            return "chat", flags | MISSING_KEYS
        uses_tools = len(record) > 1 and not _TOOL_TOP_KEYS.isdisjoint(record)
        for message in messages:
            if (
                type(message) is dict
                and len(message) == 2
                and type(message.get("content")) is str
                and message.get("role") in CHAT_ROLES
            ):
                continue  # the usual {"role", "content"} message: nothing to look at
            if type(message) is not dict:
                flags |= MESSAGE_NOT_OBJECT
                continue
            if (len(message) != 2 or "content" not in message) and set(message) - CHAT_MESSAGE_KEYS:
                flags |= MESSAGE_EXTRA
            role = message.get("role")
            if role not in CHAT_ROLES:
                flags |= BAD_ROLE
            if type(message.get("content")) is not str and not makes_a_call(message):
                flags |= BAD_CONTENT
            uses_tools = uses_tools or role == "tool" or not _TOOL_MESSAGE_KEYS.isdisjoint(message)
        if uses_tools and tool_use_problems(record):
            flags |= BAD_TOOL_USE
        last = messages[-1]
        if (
            type(last) is not dict
            or last.get("role") != "assistant"
            or (type(last.get("content")) is not str and not makes_a_call(last))
        ):
            flags |= NO_ASSISTANT
        return "chat", flags
    if "prompt" in record or "completion" in record:
        flags = TOP_EXTRA if len(record) != 2 and set(record) - COMPLETION_KEYS else 0
        if type(record.get("prompt")) is not str or type(record.get("completion")) is not str:
            flags |= MISSING_KEYS
        return "completion", flags
    return None, 0


def _lines_of(data: CheckData, indices: Sequence[int]) -> List[int]:
    return [data.lines[i] for i in indices]


# ---------------------------------------------------------------- the checks


def _unparsed(data: CheckData) -> List[int]:
    if "unparsed" not in data._cache:
        data._cache["unparsed"] = (
            []
            if None not in data.kinds
            else [i for i, kind in enumerate(data.kinds) if kind is None and type(data.records[i]) is UnparsedLine]
        )
    return data._cache["unparsed"]


def check_json_lines(data: CheckData) -> List[Finding]:
    """Every line of the file is UTF-8 text holding one JSON value (the other checks still look at the rest)."""
    bad = _unparsed(data)
    if not bad:
        return []
    shown = "; ".join(f"line {data.lines[i]}: {data.records[i].problem}" for i in bad[:3])
    return [
        Finding(
            "json_lines",
            "error",
            f"lines that cannot be read as JSON: {len(bad)} ({shown})",
            "correct these lines, or drop them (--fix does)",
            _lines_of(data, bad),
        )
    ]


def check_format(data: CheckData) -> List[Finding]:
    """Every record is a JSON object in one format (chat `messages` or `prompt`/`completion`), the one expected."""
    findings = []
    unparsed = set(_unparsed(data))
    unknown = [i for i, kind in enumerate(data.kinds) if kind is None and i not in unparsed]
    if unknown:
        findings.append(
            Finding(
                "format",
                "error",
                f"records that are neither chat (`messages`) nor prompt/completion objects: {len(unknown)}",
                'rewrite them as {"messages": [...]} or {"prompt": ..., "completion": ...}',
                _lines_of(data, unknown),
            )
        )
    counts = data.kind_counts()
    if len(counts) > 1:
        minority = min(counts, key=lambda k: (counts[k], k))
        odd = [i for i, kind in enumerate(data.kinds) if kind == minority]
        findings.append(
            Finding(
                "format",
                "error",
                f"the file mixes chat and prompt/completion records ({counts['chat']} chat, "
                f"{counts['completion']} completion)",
                "use one format per file: chat for gpt-4o-mini/gpt-4.1-nano, completion for babbage-002/davinci-002",
                _lines_of(data, odd),
            )
        )
    elif counts and data.fmt and next(iter(counts)) != data.fmt:
        findings.append(
            Finding(
                "format",
                "error",
                f"the records are in the {next(iter(counts))} format, but {data.fmt} was expected "
                f"(base model {data.model.name})",
                "re-export with the right --format or pick a base model of the file's format",
            )
        )
    return findings


def check_missing_keys(data: CheckData) -> List[Finding]:
    """Completion records have `prompt` and `completion` strings; chat records have a non-empty `messages` list."""
    missing = data.flagged(MISSING_KEYS)
    if not missing:
        return []
    return [
        Finding(
            "missing_keys",
            "error",
            "records without a required key (prompt and completion as text, or a non-empty messages list): "
            f"{len(missing)}",
            "add the missing key or drop the records",
            _lines_of(data, missing),
        )
    ]


def check_extra_keys(data: CheckData) -> List[Finding]:
    """No keys the API does not know: extra top-level keys are ignored (warning), unknown message keys rejected."""
    findings = []
    top = data.flagged(TOP_EXTRA)
    if top:
        extra = sorted(
            {
                k
                for i in top
                for k in data.records[i]
                if k not in (CHAT_TOP_KEYS if data.kinds[i] == "chat" else COMPLETION_KEYS)
            }
        )
        findings.append(
            Finding(
                "extra_keys",
                "warning",
                f"records with keys the API ignores ({', '.join(extra[:5])}): {len(top)}",
                "drop the extra keys (--fix does)",
                _lines_of(data, top),
            )
        )
    inner = data.flagged(MESSAGE_EXTRA)
    if inner:
        findings.append(
            Finding(
                "extra_keys",
                "error",
                f"records with unrecognised message keys "
                f"(allowed: {', '.join(sorted(CHAT_MESSAGE_KEYS))}): {len(inner)}",
                "drop the unrecognised message keys (--fix does)",
                _lines_of(data, inner),
            )
        )
    return findings


def check_message_structure(data: CheckData) -> List[Finding]:
    """Chat messages are objects with a known role and text content."""
    findings = []
    not_object = data.flagged(MESSAGE_NOT_OBJECT)
    if not_object:
        findings.append(
            Finding(
                "message_structure",
                "error",
                f"records with a message that is not an object: {len(not_object)}",
                'write each message as {"role": ..., "content": ...}',
                _lines_of(data, not_object),
            )
        )
    bad_role = data.flagged(BAD_ROLE)
    if bad_role:
        findings.append(
            Finding(
                "message_structure",
                "error",
                f"records with a missing or unknown message role "
                f"(known: {', '.join(sorted(CHAT_ROLES))}): {len(bad_role)}",
                "fix the role names",
                _lines_of(data, bad_role),
            )
        )
    bad_content = data.flagged(BAD_CONTENT)
    if bad_content:
        findings.append(
            Finding(
                "message_structure",
                "error",
                f"records with a message without text content: {len(bad_content)}",
                'give every message a "content" string',
                _lines_of(data, bad_content),
            )
        )
    return findings


def check_tool_calls(data: CheckData) -> List[Finding]:
    """Tool definitions, the assistant's tool calls and the tool messages answering them are as OpenAI documents."""
    bad = data.flagged(BAD_TOOL_USE)
    if not bad:
        return []
    example = tool_use_problems(data.records[bad[0]])[0]
    return [
        Finding(
            "tool_calls",
            "error",
            f"records with malformed tool calls: {len(bad)} (line {data.lines[bad[0]]}: {example})",
            'give each call an id, type "function", a function name and arguments as JSON '
            "text, and answer it with a tool message carrying its tool_call_id",
            _lines_of(data, bad),
        )
    ]


def check_assistant_message(data: CheckData) -> List[Finding]:
    """Every chat record ends with the assistant message the model is to learn."""
    missing = [i for i in data.flagged(NO_ASSISTANT) if not data.flags[i] & (MISSING_KEYS | MESSAGE_NOT_OBJECT)]
    if not missing:
        return []
    return [
        Finding(
            "assistant_message",
            "error",
            f"chat records that do not end with an assistant message, so there is nothing to learn: {len(missing)}",
            "add the expected answer as the last message with role assistant",
            _lines_of(data, missing),
        )
    ]


def check_empty_completions(data: CheckData) -> List[Finding]:
    """No record teaches an empty answer (an empty completion or assistant message)."""
    if all(answer.strip() for answer in set(data.good_texts("answers"))):
        return []
    empty = [i for i in data.good() if not (data.answers[i] or "").strip()]
    return [
        Finding(
            "empty_completions",
            "error",
            f"records with an empty answer: {len(empty)}",
            "drop them (--fix does) or write the answer",
            _lines_of(data, empty),
        )
    ]


def check_duplicates(data: CheckData) -> List[Finding]:
    """No record appears twice."""
    if len(set(data.keys)) == len(data.keys):
        return []
    seen, repeated = set(), []
    for i, key in enumerate(data.keys):
        if key in seen:
            repeated.append(i)
        else:
            seen.add(key)
    if not repeated:
        return []
    return [
        Finding(
            "duplicates",
            "warning",
            f"records that repeat an earlier record: {len(repeated)}",
            "drop the repeats (--fix does)",
            _lines_of(data, repeated),
        )
    ]


def check_example_count(data: CheckData) -> List[Finding]:
    """At least 10 examples (the API's minimum); a few hundred are recommended for generation tasks."""
    n = data.training_count
    if n < MIN_EXAMPLES:
        return [
            Finding(
                "example_count",
                "error",
                f"only {n} training examples; fine-tuning needs at least {MIN_EXAMPLES}",
                "add examples to the bot's training data",
            )
        ]
    if n < 100 and not data.classification:
        return [
            Finding(
                "example_count",
                "warning",
                f"only {n} training examples; a few hundred usually work much better",
                "add stories, rules or examples",
            )
        ]
    return []


def check_token_limit(data: CheckData) -> List[Finding]:
    """No example is longer than the base model's fine-tuning context (longer ones are truncated or skipped)."""
    limit = data.model.context
    if max(data.token_counts, default=0) <= limit:
        return []
    long = [i for i, n in enumerate(data.token_counts) if n > limit]
    if not long:
        return []
    return [
        Finding(
            "token_limit",
            "error",
            f"records longer than {limit:,} tokens, the limit of {data.model.name}: {len(long)}",
            "shorten them (for the response task: fewer --history turns)",
            _lines_of(data, long),
        )
    ]


def check_special_tokens(data: CheckData) -> List[Finding]:
    """No text contains a tokenizer special token such as <|endoftext|>."""
    specials = sorted(getattr(data.encoding, "special_tokens_set", None) or {"<|endoftext|>"})
    # the record's exact JSON text: JSON escapes neither "<" nor "|", so a special token shows as itself
    if "<|" not in data.joined_keys():
        return []
    hits = [i for i, key in enumerate(data.keys) if "<|" in key and any(token in key for token in specials)]
    if not hits:
        return []
    found = sorted({token for i in hits for token in specials if token in data.keys[i]})
    return [
        Finding(
            "special_tokens",
            "error",
            f"records containing special tokens the tokenizer treats as control tokens "
            f"({', '.join(found[:3])}): {len(hits)}",
            "remove them from the text (--fix does)",
            _lines_of(data, hits),
        )
    ]


def check_unicode(data: CheckData) -> List[Finding]:
    """Every text encodes as UTF-8 (a JSON `\\ud800` escape decodes to a lone surrogate that does not)."""
    try:
        data.joined_keys().encode("utf-8")
        return []
    except UnicodeEncodeError:
        pass
    bad = []
    for i, key in enumerate(data.keys):
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(i)
    if not bad:
        return []
    return [
        Finding(
            "unicode",
            "error",
            f"records with text that is not valid UTF-8 (lone surrogates): {len(bad)}",
            "drop or correct them (--fix drops them)",
            _lines_of(data, bad),
        )
    ]


def _completion_indices(data: CheckData) -> List[int]:
    if "completion" not in data._cache:
        data._cache["completion"] = (
            [i for i in data.good() if data.kinds[i] == "completion"] if data.kind_counts().get("completion") else []
        )
    return data._cache["completion"]


def _common_suffix(texts: Sequence[str]) -> str:
    if not texts:
        return ""
    return os.path.commonprefix([t[::-1] for t in texts])[::-1]


def check_prompt_separator(data: CheckData) -> List[Finding]:
    """Completion prompts all end with the same separator (so the model knows where the answer starts)."""
    indices = _completion_indices(data)
    if not indices:
        return []
    prompts_ = [data.records[i]["prompt"] for i in indices]
    suffix = _common_suffix(prompts_)
    if suffix.strip():
        inside = [i for i, p in zip(indices, prompts_) if suffix in p[: -len(suffix)]]
        if inside:
            return [
                Finding(
                    "prompt_separator",
                    "warning",
                    f"the separator {suffix!r} also occurs inside {len(inside)} prompts",
                    f"use a separator that does not occur in the text, such as {prompts.SEPARATOR!r}",
                    _lines_of(data, inside),
                )
            ]
        return []
    missing = [i for i, p in zip(indices, prompts_) if not p.endswith(prompts.SEPARATOR)]
    return [
        Finding(
            "prompt_separator",
            "warning",
            "the prompts do not end with a common separator",
            f"end every prompt with {prompts.SEPARATOR!r} (--fix does)",
            _lines_of(data, missing),
        )
    ]


def check_completion_leading_space(data: CheckData) -> List[Finding]:
    """Completions start with a space (the tokenizer's words carry their leading space)."""
    indices = [
        i
        for i in _completion_indices(data)
        if data.records[i]["completion"] and not data.records[i]["completion"][0].isspace()
    ]
    if not indices:
        return []
    return [
        Finding(
            "completion_leading_space",
            "warning",
            f"completions that do not start with a space: {len(indices)}",
            "start every completion with one space (--fix does)",
            _lines_of(data, indices),
        )
    ]


def check_completion_stop(data: CheckData) -> List[Finding]:
    """Completions all end with the same stop sequence (so generation knows when to stop)."""
    indices = _completion_indices(data)
    if not indices:
        return []
    suffix = _common_suffix([data.records[i]["completion"] for i in indices])
    if suffix.strip():
        return []
    missing = [i for i in indices if not data.records[i]["completion"].endswith(prompts.STOP)]
    return [
        Finding(
            "completion_stop",
            "warning",
            "the completions do not end with a common stop sequence",
            f"end every completion with {prompts.STOP!r} and pass it as stop= when calling the model (--fix adds it)",
            _lines_of(data, missing),
        )
    ]


def _upper_share(texts: Sequence[str]) -> float:
    raw = "\n".join(texts).encode("utf-8", "surrogatepass")
    letters = len(raw) - len(raw.translate(None, _LETTERS))
    upper = len(raw) - len(raw.translate(None, _UPPER))
    return upper / letters if letters else 0.0


def check_capitalisation(data: CheckData) -> List[Finding]:
    """Prompts and answers are not mostly upper case (the legacy tool suggested lowercasing then)."""
    findings = []
    for side in ("prompts", "answers"):
        share = _upper_share(data.good_texts(side))
        if share > CAPITALISED_SHARE:
            findings.append(
                Finding(
                    "capitalisation",
                    "warning",
                    f"{share:.0%} of the letters in the {side} are upper case",
                    "lowercase the text unless the casing carries meaning",
                )
            )
    return findings


def _labels(data: CheckData) -> List[Tuple[int, str]]:
    return data.labelled()


def _label_name(data: CheckData, label: str) -> str:
    intent = data.codec.intent_of(label) if data.codec is not None else None
    return f"{label} ({intent})" if intent and intent != label else label


def check_label_conflicts(data: CheckData) -> List[Finding]:
    """Classification: the same text is never labelled with two different intents."""
    if not data.classification:
        return []
    if data.all_wellformed() and len(set(data.prompt_texts)) == len(set(zip(data.prompt_texts, data.answers))):
        return []  # as many distinct texts as distinct (text, label) pairs: no text has two labels
    first: Dict[str, str] = {}
    conflicting = set()
    for i, label in _labels(data):
        text = data.prompt_texts[i]
        if first.setdefault(text, label) != label:
            conflicting.add(text)
    if not conflicting:
        return []
    by_text: Dict[str, set] = defaultdict(set)
    indices = []
    for i, label in _labels(data):
        text = data.prompt_texts[i]
        if text in conflicting:
            by_text[text].add(label)
            indices.append(i)
    example = min(conflicting)
    names = " / ".join(_label_name(data, label) for label in sorted(by_text[example]))
    return [
        Finding(
            "label_conflicts",
            "warning",
            f"texts labelled with different intents: {len(conflicting)}, e.g. {example!r}: {names}",
            "keep each text under one intent in the NLU data (rasa data validate shows them too)",
            _lines_of(data, indices),
        )
    ]


def check_examples_per_label(data: CheckData) -> List[Finding]:
    """Classification: every label has at least Rasa's minimum of 2 examples; ~100 per class is the guidance."""
    if not data.classification:
        return []
    counts = data.label_counts()
    findings = []
    too_few = sorted(label for label, n in counts.items() if n < RASA_MIN_PER_LABEL)
    if too_few:
        too_few_set = set(too_few)
        indices = [i for i, label in _labels(data) if label in too_few_set]
        findings.append(
            Finding(
                "examples_per_label",
                "warning",
                f"labels with fewer than {RASA_MIN_PER_LABEL} examples (Rasa's minimum; they cannot be in both "
                f"train and valid): {len(too_few)}: " + ", ".join(_label_name(data, label) for label in too_few[:5]),
                "add examples to these intents",
                _lines_of(data, indices),
            )
        )
    below = sorted(label for label, n in counts.items() if RASA_MIN_PER_LABEL <= n < RECOMMENDED_PER_LABEL)
    if below:
        findings.append(
            Finding(
                "examples_per_label",
                "warning",
                f"labels with fewer than {RECOMMENDED_PER_LABEL} examples: {len(below)} of {len(counts)} "
                f"(OpenAI's guidance for classification; smallest: "
                + ", ".join(
                    f"{_label_name(data, label)}={counts[label]}"
                    for label in sorted(below, key=lambda name: (counts[name], name))[:3]
                )
                + ")",
                "more examples per intent help; the model still learns from fewer",
            )
        )
    return findings


def check_class_imbalance(data: CheckData) -> List[Finding]:
    """Classification: the largest class is at most 10 times the smallest."""
    if not data.classification:
        return []
    counts = data.label_counts()
    if len(counts) < 2:
        return []
    largest = max(counts, key=lambda label: (counts[label], label))
    smallest = min(counts, key=lambda label: (counts[label], label))
    if counts[largest] <= IMBALANCE_RATIO * counts[smallest]:
        return []
    return [
        Finding(
            "class_imbalance",
            "warning",
            f"classes are imbalanced: {_label_name(data, largest)} has {counts[largest]} examples, "
            f"{_label_name(data, smallest)} only {counts[smallest]}",
            "add examples to the small intents or thin out the large ones",
        )
    ]


def check_single_token_labels(data: CheckData) -> List[Finding]:
    """Classification: every label is one token as the model emits it, so one token's logprobs rank the classes."""
    if not data.classification or not data.fmt:
        return []
    labels = sorted({label for _, label in _labels(data)})
    one_token = one_token_of(data.encoding, data.fmt)
    long = [label for label in labels if not one_token(prompts.label_token(label, data.fmt))]
    if not long:
        return []
    long_set = set(long)
    indices = [i for i, label in _labels(data) if label in long_set]
    return [
        Finding(
            "single_token_labels",
            "warning",
            f"labels of more than one token for {data.model.encoding}: {len(long)}: " + ", ".join(long[:5]),
            "export with `rasa-gpt3 export`, whose label codec maps each intent to one token",
            _lines_of(data, indices),
        )
    ]


CHECKS: List[Callable[[CheckData], List[Finding]]] = [
    check_json_lines,
    check_format,
    check_missing_keys,
    check_extra_keys,
    check_message_structure,
    check_tool_calls,
    check_assistant_message,
    check_empty_completions,
    check_duplicates,
    check_example_count,
    check_token_limit,
    check_special_tokens,
    check_unicode,
    check_prompt_separator,
    check_completion_leading_space,
    check_completion_stop,
    check_capitalisation,
    check_label_conflicts,
    check_examples_per_label,
    check_class_imbalance,
    check_single_token_labels,
]


# ---------------------------------------------------------------- running the checks


def _detect_format(kinds: Sequence[Optional[str]]) -> Optional[str]:
    counts = Counter(kind for kind in kinds if kind)
    return max(counts, key=lambda k: (counts[k], k)) if counts else None


def _resolve_model(fmt: Optional[str], base_model: Union[None, str, BaseModel]) -> BaseModel:
    if isinstance(base_model, BaseModel):
        return base_model
    try:
        return resolve_base_model(base_model or default_base_model(fmt or "chat"), fmt)
    except ValueError as error:
        raise DataError(str(error)) from None


def validate_records(
    records: List[Any],
    *,
    fmt: Optional[str] = None,
    base_model: Union[None, str, BaseModel] = None,
    lines: Optional[List[int]] = None,
    keys: Optional[List[str]] = None,
    token_counts: Optional[List[int]] = None,
    classification: Optional[bool] = None,
    training_count: Optional[int] = None,
    codec: Any = None,
    source: str = "records",
) -> ValidationReport:
    """Runs every check on `records` and returns the report with counts, token totals and the cost estimate.

    `fmt` is the expected format (default: detected); `lines` the line number of each record (default 1..n);
    `keys` an exact text per record for duplicate detection (default: its canonical JSON); `classification`
    forces or suppresses the label checks (default: detected as the legacy tool did, fewer distinct answers
    than a third of the records); `training_count` is the size of the training file when `records` also hold
    the validation split.
    """
    with paused_garbage_collection():
        return _validate_records(
            records,
            fmt=fmt,
            base_model=base_model,
            lines=lines,
            keys=keys,
            token_counts=token_counts,
            classification=classification,
            training_count=training_count,
            codec=codec,
            source=source,
        )


def _validate_records(
    records: List[Any],
    *,
    fmt: Optional[str],
    base_model: Union[None, str, BaseModel],
    lines: Optional[List[int]],
    keys: Optional[List[str]],
    token_counts: Optional[List[int]],
    classification: Optional[bool],
    training_count: Optional[int],
    codec: Any,
    source: str,
) -> ValidationReport:
    parts: List[_Parts] = []
    append = parts.append
    for record in records:
        append(_intent_shape_parts(record) or _record_parts(record))
    kinds: List[Optional[str]] = [part[0] for part in parts]
    unparsed = sum(1 for record in records if type(record) is UnparsedLine) if None in kinds else 0
    flags: List[int] = [part[1] for part in parts]
    prompt_texts: List[Optional[str]] = [part[2] for part in parts]
    answers: List[Optional[str]] = [part[3] for part in parts]
    detected = _detect_format(kinds)
    model = _resolve_model(fmt or detected, base_model)
    encoding = get_encoding(model.encoding)
    if keys is None:
        keys = [json.dumps(record, ensure_ascii=False, sort_keys=True, default=repr) for record in records]
    if token_counts is None:
        good = [i for i, text in enumerate(prompt_texts) if text is not None]
        counted = _count_tokens([records[i] for i in good], encoding)
        token_counts = [0] * len(records)
        for i, n in zip(good, counted):
            token_counts[i] = n
    answer_counts = Counter(answers)
    answer_counts.pop(None, None)
    answer_counts.pop("", None)
    answered, distinct = sum(answer_counts.values()), len(answer_counts)
    if classification is None:
        classification = answered >= 2 and distinct < answered / 3
    data = CheckData(
        records=records,
        lines=lines if lines is not None else list(range(1, len(records) + 1)),
        fmt=fmt or detected,
        model=model,
        encoding=encoding,
        kinds=kinds,
        flags=flags,
        prompt_texts=prompt_texts,
        answers=answers,
        keys=keys,
        token_counts=token_counts,
        classification=bool(classification),
        training_count=len(records) - unparsed if training_count is None else training_count,
        codec=codec,
    )
    report = ValidationReport(source=source)
    for check in CHECKS:
        report.findings.extend(check(data))
    total = sum(token_counts)
    epochs = default_epochs(data.training_count)
    report.stats = {
        "records": len(records) - unparsed,
        **({"unparsed_lines": unparsed} if unparsed else {}),
        "format": data.fmt,
        "classification": data.classification,
        "labels": distinct if data.classification else None,
        "base_model": model.name,
        "tokens": {"total": total, "max_per_record": max(token_counts, default=0), "context_limit": model.context},
        "estimate": {
            "epochs": epochs,
            "trained_tokens": total * epochs,
            "training_cost_usd": round(model.training_cost(total * epochs), 6),
            **({"local": True} if model.open_weights else {}),
        },
    }
    return report


def _count_tokens(records: List[Dict[str, Any]], encoding: Any) -> List[int]:
    safe = []
    for record in records:
        # lone surrogates cannot be tokenized; the unicode check reports them
        text = json.dumps(record, ensure_ascii=False)
        try:
            text.encode("utf-8")
            safe.append(record)
        except UnicodeEncodeError:
            safe.append(json.loads(text.encode("utf-8", "replace").decode("utf-8")))
    return count_record_tokens(safe, encoding)


# ---------------------------------------------------------------- files


@dataclass
class JsonlFile:
    """A parsed JSONL file: its records, the line number of each, and each line's exact text."""

    path: Path
    records: List[Any]
    lines: List[int]
    texts: List[str]


def read_jsonl(path: Union[str, Path]) -> JsonlFile:
    """Parses a JSONL file; raises DataError only when the file cannot be read.

    A line that is not UTF-8 or not JSON stays in `records` as an `UnparsedLine`, so every line is checked and
    the `json_lines` check reports the broken ones by line number with the rest.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a JSONL file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    records, lines, texts = [], [], []
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as error:
            text = chunk.decode("utf-8", "replace").strip()
            record: Any = UnparsedLine(f"invalid UTF-8 at byte {error.start + 1} of the line")
        else:
            text = text.strip()
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not text:
                continue
            record = _parse_line(text)
        records.append(record)
        lines.append(number)
        texts.append(text)
    return JsonlFile(path, records, lines, texts)


def unreadable_report(path: Union[str, Path], error: BaseException) -> ValidationReport:
    """The report on a file that cannot be read at all (missing, a directory, no permission): one `file` error."""
    finding = Finding("file", "error", str(error), "name a readable JSONL file")
    return ValidationReport(source=str(path), findings=[finding], stats={"records": 0})


def _parse_line(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        return UnparsedLine(f"not JSON ({error.msg} at column {error.colno})")
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        return UnparsedLine(f"not JSON ({error})")
    except RecursionError:
        return UnparsedLine("not JSON (nested too deeply)")


def validate_file(
    path: Union[str, Path], *, fmt: Optional[str] = None, base_model: Union[None, str, BaseModel] = None
) -> ValidationReport:
    """Reads a JSONL file and runs every check on it; raises DataError when the file cannot be read."""
    parsed = read_jsonl(path)
    return validate_records(
        parsed.records, fmt=fmt, base_model=base_model, lines=parsed.lines, keys=parsed.texts, source=str(path)
    )


# ---------------------------------------------------------------- --fix


def repair_records(
    records: List[Any],
    *,
    fmt: Optional[str] = None,
    base_model: Union[None, str, BaseModel] = None,
    lines: Optional[List[int]] = None,
) -> Tuple[List[Any], List[str]]:
    """A repaired copy of `records` and what was done: drops unusable, empty and duplicate records, special
    tokens and unknown keys; for completions adds the separator, the leading space and the stop sequence."""
    lines = lines if lines is not None else list(range(1, len(records) + 1))
    kinds = [_analyse(record)[0] for record in records]
    target = fmt or _detect_format(kinds)
    model = _resolve_model(target, base_model)
    specials = sorted(getattr(get_encoding(model.encoding), "special_tokens_set", None) or {"<|endoftext|>"})
    actions: Dict[str, List[int]] = defaultdict(list)
    kept: List[Any] = []
    seen = set()

    def strip_specials(text: str, line: int) -> str:
        if "<|" in text:
            for token in specials:
                if token in text:
                    text = text.replace(token, "")
                    actions["removed special tokens"].append(line)
        return text

    for record, kind, line in zip(records, kinds, lines):
        if type(record) is UnparsedLine:
            actions["dropped lines that are not JSON"].append(line)
            continue
        if kind is None or kind != target:
            actions["dropped records not in the " + str(target) + " format"].append(line)
            continue
        record = json.loads(json.dumps(record))  # a private copy to repair
        if kind == "completion":
            if set(record) - COMPLETION_KEYS:
                actions["dropped extra keys"].append(line)
                record = {k: v for k, v in record.items() if k in COMPLETION_KEYS}
        else:
            if set(record) - CHAT_TOP_KEYS:
                actions["dropped extra keys"].append(line)
                record = {k: v for k, v in record.items() if k in CHAT_TOP_KEYS}
            if isinstance(record.get("messages"), list):
                cleaned = []
                for message in record["messages"]:
                    if isinstance(message, dict) and set(message) - CHAT_MESSAGE_KEYS:
                        actions["dropped unrecognised message keys"].append(line)
                        message = {k: v for k, v in message.items() if k in CHAT_MESSAGE_KEYS}
                    cleaned.append(message)
                record["messages"] = cleaned
        if _analyse(record)[1] & _MALFORMED:
            actions["dropped malformed records (missing keys, roles or assistant answer)"].append(line)
            continue
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            actions["dropped records with invalid UTF-8"].append(line)
            continue
        if kind == "completion":
            record["prompt"] = strip_specials(record["prompt"], line)
            record["completion"] = strip_specials(record["completion"], line)
            if not prompts.clean_completion(record["completion"]):
                actions["dropped records with an empty answer"].append(line)
                continue
            if not record["prompt"].endswith(prompts.SEPARATOR):
                record["prompt"] = record["prompt"].rstrip() + prompts.SEPARATOR
                actions[f"added the separator {prompts.SEPARATOR!r}"].append(line)
            if not record["completion"][:1].isspace():
                record["completion"] = " " + record["completion"]
                actions["added a leading space to the completion"].append(line)
            if not record["completion"].endswith(prompts.STOP):
                record["completion"] = record["completion"].rstrip() + prompts.STOP
                actions[f"added the stop sequence {prompts.STOP!r}"].append(line)
        else:
            for message in record["messages"]:
                if isinstance(message.get("content"), str):
                    message["content"] = strip_specials(message["content"], line)
            if not message_text(record["messages"][-1]).strip():
                actions["dropped records with an empty answer"].append(line)
                continue
        key = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if key in seen:
            actions["dropped duplicate records"].append(line)
            continue
        seen.add(key)
        kept.append(record)
    described = []
    for action, where in actions.items():
        unique = sorted(set(where))
        shown = ", ".join(str(n) for n in unique[:10]) + (f" and {len(unique) - 10} more" if len(unique) > 10 else "")
        described.append(f"{action}: {len(unique)} (lines {shown})")
    return kept, described


def jsonl_text(records: Sequence[Any]) -> str:
    """Records as JSONL text, one compact-spaced JSON object per line, UTF-8 as is."""
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    return "".join(dumps(record) + "\n" for record in records)


def write_jsonl(path: Union[str, Path], records: Sequence[Any]) -> Path:
    """Writes records as a JSONL file, atomically (what `--fix` writes); DataError when `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory; name the file to write")
    try:
        return write_atomic(path, jsonl_text(records))
    except OSError as error:
        where = f" ({error.filename})" if error.filename and str(error.filename) != str(path) else ""
        raise DataError(f"cannot write {path}: {error.strerror or error}{where}") from None
