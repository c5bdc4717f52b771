"""The intent task's fast path: JSONL lines and exact token counts of intent records without the generic code.

100,000 examples must export in under 2 s on a 2-core machine; json.dumps and the generic per-piece token count of
every record cost more than all the rest, and every intent record has the same shape (`prompts.intent_record`), so
the lines come from one template and the counts from each text's count plus a constant. The line writer checks
its lines against json.dumps on a sample; on any difference export.py takes the generic path.
"""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

from rasa_gpt3 import prompts
from rasa_gpt3.data.tokens import count_record_tokens, count_suffixed_text_tokens, count_text_tokens

_TEXT_MARK, _LABEL_MARK = "\ue000text\ue000", "\ue000label\ue000"


def intent_line_writer(fmt: str, records: List[Dict[str, Any]], pairs: List[Tuple[str, str]]):
    """A function index → JSONL line equal to json.dumps(record), from a template of prompts.intent_record.

    The template is the record of two marker strings, serialised once and cut at the markers; each line is the
    template with the JSON-escaped text and label put back. Checked against json.dumps on a sample; on any
    difference (a prompt format that transforms the text) it returns None and the generic path is used.
    """
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    fallback = lambda i: dumps(records[i])  # noqa: E731
    template = dumps(prompts.intent_record(_TEXT_MARK, _LABEL_MARK, fmt))
    if template.count(_TEXT_MARK) != 1 or template.count(_LABEL_MARK) != 1:
        return None
    head, rest = template.split(_TEXT_MARK)
    middle, tail = rest.split(_LABEL_MARK)
    escape = json.encoder.encode_basestring  # the escaping json.dumps(ensure_ascii=False) does

    def line(i: int) -> str:
        text, label = pairs[i]
        return head + escape(text)[1:-1] + middle + escape(label)[1:-1] + tail

    sample = range(0, len(records), max(1, len(records) // 50))
    if all(line(i) == fallback(i) for i in sample) and (
        not records or line(len(records) - 1) == fallback(len(records) - 1)
    ):
        return line
    return None


def intent_token_counter(
    fmt: str,
    encoding: Any,
    records: List[Dict[str, Any]],
    pairs: List[Tuple[str, str]],
    text_counts: Optional[Future] = None,
):
    """A function indices → exact token counts of the intent records (what count_record_tokens gives).

    The counting runs on a worker thread (`text_counts`, started by the caller as soon as the texts are known):
    tiktoken releases the GIL while it encodes, so it overlaps the rest of the export on a second core.
    """
    if fmt == "chat":
        # chat accounting counts each message's content on its own: the rest of the record is a constant
        constant = count_record_tokens([prompts.intent_record("", "", fmt)], encoding)[0]
        labels = sorted({label for _, label in pairs})
        label_counts = dict(zip(labels, count_text_tokens(labels, encoding)))
        if text_counts is None:
            text_counts = in_background(count_text_tokens, [text for text, _ in pairs], encoding)

        def count(indices: List[int]) -> List[int]:
            per_text = text_counts.result()
            return [constant + per_text[i] + label_counts[pairs[i][1]] for i in indices]

        return count

    template = prompts.intent_record(_TEXT_MARK, _LABEL_MARK, fmt)
    prefix, _, suffix = template["prompt"].partition(_TEXT_MARK)
    if prefix or _TEXT_MARK in template["completion"]:
        per_record = in_background(count_record_tokens, records, encoding)
        return lambda indices: [per_record.result()[i] for i in indices]
    # completion records: count(prompt = text + separator) + count(completion, one per label)
    prompt_counts = in_background(count_suffixed_text_tokens, [text for text, _ in pairs], suffix, encoding)
    completions = {
        label: prompts.intent_record("", label, fmt)["completion"] for label in {label for _, label in pairs}
    }
    completion_counts = dict(zip(completions, count_text_tokens(list(completions.values()), encoding)))

    def count_completion(indices: List[int]) -> List[int]:
        per_prompt = prompt_counts.result()
        return [per_prompt[i] + completion_counts[pairs[i][1]] for i in indices]

    return count_completion


def in_background(function: Callable[..., Any], *args: Any) -> Future:
    """Runs `function(*args)` on a worker thread and returns its future."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rasa-gpt3-tokens")
    try:
        return executor.submit(function, *args)
    finally:
        executor.shutdown(wait=False)
