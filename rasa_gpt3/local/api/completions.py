"""The /v1/chat/completions and /v1/completions routes: the two response shapes, whole or streamed as events.

Reading the request, generating and counting are shared (completion_request.py); what differs is how each endpoint
writes choices and log-probabilities: chat lists per-token entries with bytes and top alternatives, the legacy
endpoint parallel lists of tokens, log-probabilities, top alternatives and text offsets.
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

from aiohttp import web

from rasa_gpt3.local import ids
from rasa_gpt3.local.api.backend import BACKEND
from rasa_gpt3.local.api.completion_request import (
    answer,
    prompt_tokens_within_context,
    read_completion_request,
    serving_engine,
    usage,
)
from rasa_gpt3.local.api.params import json_body
from rasa_gpt3.local.engines import Generation

SYSTEM_FINGERPRINT = "fp_local"

routes = web.RouteTableDef()


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    wanted = read_completion_request(await json_body(request), chat=True)
    engine = serving_engine(request.app[BACKEND], wanted)
    prompt_counts = await prompt_tokens_within_context(engine, wanted)
    answers = await answer(engine, wanted, wanted.prompts[0], garbage=bool(request.get("garbage")))
    created = int(time.time())
    completion_id = "chatcmpl-" + ids.new_id("file")[5:]
    counted = usage(engine, prompt_counts, answers)
    if wanted.stream:
        response = await _start_stream(request)
        base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": wanted.model_id,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        for index, (generation, reason) in enumerate(answers):
            await _send(
                response,
                {
                    **base,
                    "choices": [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                },
            )
            entries = _chat_logprobs(generation, wanted.top_logprobs)
            for position, token in enumerate(generation.tokens):
                logprobs = {"content": [entries[position]], "refusal": None} if wanted.logprobs else None
                await _send(
                    response,
                    {
                        **base,
                        "choices": [
                            {"index": index, "delta": {"content": token}, "logprobs": logprobs, "finish_reason": None}
                        ],
                    },
                )
            await _send(
                response,
                {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]},
            )
        if wanted.include_usage:
            await _send(response, {**base, "choices": [], "usage": counted})
        return await _end_stream(response)

    choices = []
    for index, (generation, reason) in enumerate(answers):
        choices.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": generation.text, "refusal": None, "annotations": []},
                "logprobs": (
                    {"content": _chat_logprobs(generation, wanted.top_logprobs), "refusal": None}
                    if wanted.logprobs
                    else None
                ),
                "finish_reason": reason,
            }
        )
    return web.json_response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": wanted.model_id,
            "choices": choices,
            "usage": counted,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def _chat_logprobs(generation: Generation, top_n: int) -> List[Dict[str, Any]]:
    """Chat's log-probability entries: one per token, with its bytes and its `top_n` alternatives."""
    return [
        {
            "token": token,
            "logprob": logprob,
            "bytes": _token_bytes(token),
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": _token_bytes(t)} for t, lp in top[:top_n]],
        }
        for token, logprob, top in zip(generation.tokens, generation.logprobs, generation.top)
    ]


def _token_bytes(token: str) -> List[int]:
    return list(token.encode("utf-8"))


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    wanted = read_completion_request(await json_body(request), chat=False)
    engine = serving_engine(request.app[BACKEND], wanted)
    prompt_counts = await prompt_tokens_within_context(engine, wanted)
    choices = []
    all_answers = []
    for prompt in wanted.prompts:
        answers = await answer(engine, wanted, prompt, garbage=bool(request.get("garbage")))
        all_answers += answers
        for generation, reason in answers:
            logprobs = _legacy_logprobs(generation, len(prompt), wanted.top_logprobs) if wanted.logprobs else None
            choices.append(
                {"index": len(choices), "text": generation.text, "logprobs": logprobs, "finish_reason": reason}
            )
    result = {
        "id": "cmpl-" + ids.new_id("file")[5:],
        "object": "text_completion",
        "created": int(time.time()),
        "model": wanted.model_id,
        "choices": choices,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": usage(engine, prompt_counts, all_answers),
    }
    if wanted.stream:
        response = await _start_stream(request)
        for choice in choices:
            await _send(response, {**result, "usage": None, "choices": [choice]})
        return await _end_stream(response)
    return web.json_response(result)


def _legacy_logprobs(generation: Generation, prompt_length: int, top_n: int) -> Dict[str, Any]:
    """The legacy endpoint's log-probabilities: parallel lists, alternatives as {token: logprob} (at least one)."""
    offsets, offset = [], prompt_length
    for token in generation.tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": generation.tokens,
        "token_logprobs": generation.logprobs,
        "top_logprobs": [dict(top[: max(top_n, 1)]) for top in generation.top],
        "text_offset": offsets,
    }


async def _start_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


async def _send(response: web.StreamResponse, payload: Dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(payload).encode("utf-8") + b"\n\n")


async def _end_stream(response: web.StreamResponse) -> web.StreamResponse:
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
