"""What a chat or legacy completion request asks for, read once for both endpoints, and the answers to it.

`read_completion_request` checks the body (model, messages or prompt, logprobs, max_tokens, sampling, stops,
stream) into a CompletionRequest; `serving_engine` finds the model and checks it suits the endpoint; `answer` asks
the engine for `n` generations per prompt and cuts each at the stops and max_tokens as the API does; `usage` counts
the tokens. completions.py only renders the two endpoints' response shapes.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.local.api.backend import Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.api.params import expect, int_in
from rasa_gpt3.local.engines import Engine, Generation, Prompt, answer_text
from rasa_gpt3.local.faults import GARBAGE_TEXT

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_TOKENS_LIMIT = 1_000_000
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# chat usage: every message's role and content each count this many tokens of framing, the reply's priming too
FRAMING_TOKENS = 3


@dataclass(frozen=True)
class CompletionRequest:
    """A checked chat or legacy completion request."""

    chat: bool
    model_id: str
    prompts: List[Prompt]  # chat: one list of messages; legacy: one text per prompt
    max_tokens: Optional[int]
    stops: List[str]
    temperature: Optional[float]
    seed: Optional[int]
    n: int
    stream: bool
    logprobs: bool  # whether the choices carry log-probabilities
    top_logprobs: int  # alternatives per token the engine computes
    include_usage: bool  # chat streaming: a last chunk with the usage


def read_completion_request(body: Dict[str, Any], chat: bool) -> CompletionRequest:
    """The request `body` of /v1/chat/completions (`chat`) or /v1/completions, checked; raises ApiError 400."""
    model_id = expect(body, "model", str, required=True)
    if chat:
        prompts: List[Prompt] = [_chat_messages(body)]
        logprobs = bool(expect(body, "logprobs", bool, default=False))
        top_logprobs = int_in(body, "top_logprobs", 0, 20, default=0) or 0
        if top_logprobs and not logprobs:
            raise ApiError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")
        max_tokens = int_in(body, "max_completion_tokens", 1, MAX_TOKENS_LIMIT) or int_in(
            body, "max_tokens", 1, MAX_TOKENS_LIMIT
        )
    else:
        prompts = _legacy_prompts(body)
        logprobs_n = int_in(body, "logprobs", 0, 5)
        logprobs, top_logprobs = logprobs_n is not None, logprobs_n or 0
        if body.get("echo"):
            raise ApiError(400, "'echo' is not supported by the local backend.", param="echo")
        max_tokens = int_in(body, "max_tokens", 0, MAX_TOKENS_LIMIT, default=DEFAULT_COMPLETION_MAX_TOKENS)
    temperature = expect(body, "temperature", (int, float))
    if temperature is not None and not 0 <= temperature <= 2:
        raise ApiError(400, "Invalid 'temperature': must be between 0 and 2.", param="temperature")
    seed = expect(body, "seed", int)
    n = int_in(body, "n", 1, 16, default=1)
    stops = _stops(body)
    stream = bool(expect(body, "stream", bool, default=False))
    # only a streamed chat uses its stream options
    include_usage = chat and stream and bool((expect(body, "stream_options", dict) or {}).get("include_usage"))
    return CompletionRequest(
        chat=chat,
        model_id=model_id,
        prompts=prompts,
        max_tokens=max_tokens,
        stops=stops,
        temperature=temperature,
        seed=seed,
        n=n,
        stream=stream,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        include_usage=include_usage,
    )


def _chat_messages(body: Dict[str, Any]) -> List[Dict[str, str]]:
    messages = expect(body, "messages", list, required=True)
    if not messages:
        raise ApiError(
            400,
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            param="messages",
            code="empty_array",
        )
    clean = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
            raise ApiError(400, "Invalid 'messages': every message needs a role.", param="messages")
        clean.append({"role": message["role"], "content": _message_text(message.get("content"))})
    return clean


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text"
        )
    if content is None:
        return ""
    raise ApiError(400, "Invalid 'messages': content must be a string or a list of text parts.", param="messages")


def _legacy_prompts(body: Dict[str, Any]) -> List[Prompt]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return prompt
    if prompt is None:
        raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    raise ApiError(400, "Invalid 'prompt': the local backend accepts a string or a list of strings.", param="prompt")


def _stops(body: Dict[str, Any]) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return [s for s in stop if s]
    raise ApiError(400, "Invalid 'stop': a string or a list of up to 4 strings.", param="stop")


def serving_engine(backend: Backend, wanted: CompletionRequest) -> Engine:
    """The engine serving the requested model; raises ApiError when there is none or it suits the other endpoint."""
    engine = backend.model(wanted.model_id)
    if wanted.chat and engine.format != "chat":
        raise ApiError(
            404,
            "This is not a chat model and thus not supported in the v1/chat/completions endpoint. "
            "Did you mean to use v1/completions?",
            param="model",
            code="model_not_supported",
        )
    if not wanted.chat and engine.format != "completion":
        raise ApiError(
            404,
            "This is a chat model and not supported in the v1/completions endpoint. "
            "Did you mean to use v1/chat/completions?",
            param="model",
            code="model_not_supported",
        )
    return engine


async def answer(
    engine: Engine, wanted: CompletionRequest, prompt: Prompt, garbage: bool = False
) -> List[Tuple[Generation, str]]:
    """`wanted.n` generations for `prompt` (choice i sampled with seed + i), each cut and with its finish reason.

    `garbage` (an injected fault) answers text that is neither a label nor JSON instead of asking the engine.
    """
    if garbage:
        generations = [_garbage(engine) for _ in range(wanted.n)]
    else:
        loop = asyncio.get_running_loop()
        generations = []
        for index in range(wanted.n):
            generate = functools.partial(
                engine.generate,
                prompt,
                max_tokens=wanted.max_tokens,
                stops=wanted.stops,
                temperature=wanted.temperature,
                seed=None if wanted.seed is None else wanted.seed + index,
                top_logprobs=wanted.top_logprobs,
            )
            generations.append(await loop.run_in_executor(None, generate))
    return [cut_generation(generation, wanted.stops, wanted.max_tokens) for generation in generations]


def _garbage(engine: Engine) -> Generation:
    pieces = [answer_text(GARBAGE_TEXT, engine.format)]
    return Generation(tokens=pieces, logprobs=[-0.1], top=[[(pieces[0], -0.1)]])


def cut_generation(generation: Generation, stops: Sequence[str], max_tokens: Optional[int]) -> Tuple[Generation, str]:
    """Cuts a generation at the first stop sequence and at max_tokens, as the API does; returns it and the reason."""
    tokens, logprobs, tops = generation.tokens, generation.logprobs, generation.top
    reason = generation.finish_reason
    if stops:
        text = ""
        for position, token in enumerate(tokens):
            candidate = text + token
            cuts = [candidate.find(stop) for stop in stops if candidate.find(stop) >= 0]
            if cuts:
                keep = min(cuts) - len(text)
                if keep > 0:
                    tokens = tokens[:position] + [token[:keep]]
                    logprobs, tops = logprobs[: position + 1], tops[: position + 1]
                else:
                    tokens, logprobs, tops = tokens[:position], logprobs[:position], tops[:position]
                reason = "stop"
                break
            text = candidate
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, logprobs, tops, reason = tokens[:max_tokens], logprobs[:max_tokens], tops[:max_tokens], "length"
    return Generation(tokens=list(tokens), logprobs=list(logprobs), top=list(tops)), reason


def usage(engine: Engine, prompts: Sequence[Prompt], answers: Sequence[Tuple[Generation, str]]) -> Dict[str, int]:
    """The usage object: tokens of the prompts (chat messages with their framing) and of the answers' texts."""
    prompt_tokens = 0
    for prompt in prompts:
        if isinstance(prompt, str):
            prompt_tokens += engine.count_tokens(prompt)
        else:
            parts = [m["content"] for m in prompt] + [m["role"] for m in prompt]
            prompt_tokens += sum(engine.count_tokens(part) + FRAMING_TOKENS for part in parts) + FRAMING_TOKENS
    completion_tokens = sum(engine.count_tokens(generation.text) for generation, _ in answers)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
