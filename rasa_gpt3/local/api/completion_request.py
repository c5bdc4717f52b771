"""What a chat or legacy completion request asks for, read once for both endpoints, and the answers to it.

`read_completion_request` checks the body (model, messages or prompt, logprobs, max_tokens, sampling, stops,
stream) into a CompletionRequest, with the ranges of OpenAI's spec; `serving_engine` finds the model and checks it
suits the endpoint; `prompt_tokens_within_context` counts the prompt's tokens and refuses a request over the model's
context as OpenAI does (400 `context_length_exceeded`) before the engine sees it; `answer` asks the engine for `n`
generations per prompt and cuts each at the stops and max_tokens as the API does; `usage` counts the tokens.
completions.py only renders the two endpoints' response shapes.

Counting is linear in the text: tiktoken's cost grows faster than the length of one long run of characters without
a space, so text is counted in pieces of at most COUNT_CHUNK_CHARS cut at spaces (the same counts for ordinary
text); a 1 MB message is counted and refused in tens of milliseconds, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rasa_gpt3.local.api.backend import Backend
from rasa_gpt3.local.api.errors import ApiError
from rasa_gpt3.local.api.params import expect, int_in, number_in
from rasa_gpt3.local.engines import Engine, Generation, Prompt, answer_text
from rasa_gpt3.local.faults import GARBAGE_TEXT

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_TOKENS_LIMIT = 1_000_000
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")
# chat usage: every message's role and content each count this many tokens of framing, the reply's priming too
FRAMING_TOKENS = 3
# the spec's range of a completion's `seed` (a 64-bit integer); engines get it folded into [0, 2**64)
SEED_RANGE = (-(2**63), 2**63 - 1)
# choices one request may ask for (prompts times n): each costs a model call, so this bounds a request's cost
MAX_CHOICES = 128
# text is tokenized in pieces of at most this many characters (see the module docstring)
COUNT_CHUNK_CHARS = 4096


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
    temperature = number_in(body, "temperature", 0, 2)
    seed = int_in(body, "seed", *SEED_RANGE)
    n = int_in(body, "n", 1, 16, default=1)
    if len(prompts) * n > MAX_CHOICES:
        raise ApiError(
            400,
            f"Invalid 'prompt': the local backend answers at most {MAX_CHOICES} choices per request (prompts times n).",
            param="prompt",
        )
    _check_unused_sampling(body, chat)
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


def _check_unused_sampling(body: Dict[str, Any], chat: bool) -> None:
    """Checks the sampling parameters the engines do not use against the spec's ranges, as the API would."""
    number_in(body, "top_p", 0, 1)
    number_in(body, "presence_penalty", -2, 2)
    number_in(body, "frequency_penalty", -2, 2)
    if not chat:
        int_in(body, "best_of", 0, 20)
    bias = expect(body, "logit_bias", dict) or {}
    for token, value in bias.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise ApiError(
                400,
                f"Invalid 'logit_bias': the bias of token {token[:20]} must be a number between -100 and 100.",
                param="logit_bias",
                code="invalid_value",
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
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        if all(isinstance(text, str) for text in texts):
            return "".join(texts)
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
                # engines get a seed in [0, 2**64): numpy's generators, for one, refuse negative seeds
                seed=None if wanted.seed is None else (wanted.seed + index) % 2**64,
                top_logprobs=wanted.top_logprobs,
            )
            generations.append(await loop.run_in_executor(None, generate))
    return [cut_generation(generation, wanted.stops, wanted.max_tokens) for generation in generations]


def _garbage(engine: Engine) -> Generation:
    pieces = [answer_text(GARBAGE_TEXT, engine.format)]
    return Generation(tokens=pieces, logprobs=[-0.1], top=[[(pieces[0], -0.1)]])


def cut_generation(generation: Generation, stops: Sequence[str], max_tokens: Optional[int]) -> Tuple[Generation, str]:
    """Cuts a generation as the API ends one: after max_tokens tokens (`length`), or earlier where the text first
    shows a stop sequence (`stop`; a stop the token limit leaves unwritten never counts); returns it and the reason."""
    tokens, logprobs, tops = generation.tokens, generation.logprobs, generation.top
    reason = generation.finish_reason
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, logprobs, tops, reason = tokens[:max_tokens], logprobs[:max_tokens], tops[:max_tokens], "length"
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
    return Generation(tokens=list(tokens), logprobs=list(logprobs), top=list(tops)), reason


def count_text(engine: Engine, text: str) -> int:
    """Tokens of `text` in the engine's tokenizer, counted in pieces cut at spaces so the cost stays linear."""
    if len(text) <= COUNT_CHUNK_CHARS:
        return engine.count_tokens(text)
    total, start = 0, 0
    while start < len(text):
        end = min(len(text), start + COUNT_CHUNK_CHARS)
        if end < len(text):
            space = text.rfind(" ", start + COUNT_CHUNK_CHARS // 2, end)
            end = space if space > start else end
        total += engine.count_tokens(text[start:end])
        start = end
    return total


def prompt_tokens(engine: Engine, prompt: Prompt) -> int:
    """Tokens of one prompt as usage reports them (chat messages with their framing)."""
    if isinstance(prompt, str):
        return count_text(engine, prompt)
    parts = [m["content"] for m in prompt] + [m["role"] for m in prompt]
    return sum(count_text(engine, part) + FRAMING_TOKENS for part in parts) + FRAMING_TOKENS


def check_context(engine: Engine, wanted: CompletionRequest) -> List[int]:
    """The prompts' token counts; raises OpenAI's 400 when a prompt and the answer's tokens exceed the context."""
    context = engine.context_length
    counts = [prompt_tokens(engine, prompt) for prompt in wanted.prompts]
    for counted in counts:
        if wanted.chat and wanted.max_tokens is None and counted > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{counted} tokens. Please reduce the length of the messages.",
                param="messages",
                code="context_length_exceeded",
            )
        requested = counted + (wanted.max_tokens or 0)
        if wanted.chat and requested > context:
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens. However, you requested {requested} "
                f"tokens ({counted} in the messages, {wanted.max_tokens} in the completion). Please reduce the "
                "length of the messages or completion.",
                param="messages",
                code="context_length_exceeded",
            )
        if not wanted.chat and requested > context:
            # the legacy endpoint's own wording, and like OpenAI's it carries neither param nor code
            raise ApiError(
                400,
                f"This model's maximum context length is {context} tokens, however you requested {requested} "
                f"tokens ({counted} in your prompt; {wanted.max_tokens or 0} for the completion). Please reduce your "
                "prompt; or completion length.",
            )
    return counts


async def prompt_tokens_within_context(engine: Engine, wanted: CompletionRequest) -> List[int]:
    """`check_context` in a worker thread, so counting a long prompt never holds up other requests."""
    return await asyncio.get_running_loop().run_in_executor(None, check_context, engine, wanted)


def usage(engine: Engine, prompt_counts: Sequence[int], answers: Sequence[Tuple[Generation, str]]) -> Dict[str, int]:
    """The usage object: the prompts' tokens (from check_context) and the tokens of the answers' texts."""
    prompt_total = sum(prompt_counts)
    completion_tokens = sum(count_text(engine, generation.text) for generation, _ in answers)
    return {
        "prompt_tokens": prompt_total,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_total + completion_tokens,
    }
