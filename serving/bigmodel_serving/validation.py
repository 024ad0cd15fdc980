"""Request bodies -> `PreparedRequest`, or a 4xx `APIError` that says exactly what is wrong.

Checks, in order: JSON and schema (400), unsupported parameters (400), model name (404), n (400),
prompt length against max_model_len (400), max_tokens against the room left (400).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from bigmodel_serving.engines.base import Engine, SamplingParams
from bigmodel_serving.errors import APIError, bad_request, model_not_found
from bigmodel_serving.generation import PreparedRequest
from bigmodel_serving.protocol import ChatCompletionRequest, CompletionRequest

BodyModel = TypeVar("BodyModel", bound=BaseModel)

# Tokenizing a long prompt takes milliseconds: do it in a thread so other requests keep flowing.
_THREAD_TOKENIZE_CHARS = 8_192
_MAX_STOP_SEQUENCES = 4
_DEFAULT_COMPLETION_MAX_TOKENS = 16  # the OpenAI completions default
_GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class ModelCatalog:
    """The names this server answers to: the base model and `<base>:<adapter>` for each adapter."""

    base: str
    adapters: tuple[str, ...]
    max_model_len: int
    max_n: int

    def names(self) -> list[str]:
        return [self.base, *(f"{self.base}:{adapter}" for adapter in self.adapters)]

    def resolve(self, name: str) -> str | None:
        """The adapter for `name` (None for the base model); 404 for a name not served here."""
        if name == self.base:
            return None
        base, separator, adapter = name.partition(":")
        if separator and base == self.base and adapter in self.adapters:
            return adapter
        raise model_not_found(name)


def parse_body(raw: bytes, model: type[BodyModel]) -> BodyModel:
    """Validate a JSON body strictly; 400 with the first problem's field path otherwise."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        raise _schema_error(error) from None


def _schema_error(error: ValidationError) -> APIError:
    first = error.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.", code="invalid_json"
        )
    param = ".".join(str(part) for part in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return bad_request(f"Unrecognized request argument supplied: {param}", param=param, code="unknown_parameter")
    if first["type"] in ("model_type", "model_attributes_type") and not first["loc"]:
        return bad_request("The request body must be a JSON object.", code="invalid_type")
    where = f"{param}: " if param else ""
    return bad_request(f"Invalid request: {where}{first['msg']}", param=param, code="invalid_value")


async def _encode(engine: Engine, text: str, *, add_special_tokens: bool) -> list[int]:
    if len(text) < _THREAD_TOKENIZE_CHARS:
        return engine.encode(text, add_special_tokens=add_special_tokens)
    return await asyncio.to_thread(engine.encode, text, add_special_tokens=add_special_tokens)


def _check_prompt_fits(prompt_tokens: int, catalog: ModelCatalog) -> None:
    if prompt_tokens == 0:
        raise bad_request("The prompt is empty (0 tokens); send some text.", param="prompt", code="invalid_value")
    if prompt_tokens >= catalog.max_model_len:
        raise bad_request(
            f"This model's maximum context length is {catalog.max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens, leaving no room to generate. Shorten the prompt.",
            param="messages",
            code="context_length_exceeded",
        )


def _max_tokens(requested: int | None, prompt_tokens: int, catalog: ModelCatalog, default: int | None) -> int:
    room = catalog.max_model_len - prompt_tokens
    if requested is None:
        return room if default is None else min(default, room)
    if requested <= 0:
        raise bad_request("max_tokens must be at least 1.", param="max_tokens", code="invalid_value")
    if requested > room:
        raise bad_request(
            f"max_tokens is {requested}, but this model's maximum context length is {catalog.max_model_len} "
            f"tokens and the prompt has {prompt_tokens}: at most {room} tokens can be generated.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def _sampling(body: ChatCompletionRequest | CompletionRequest, max_tokens: int) -> SamplingParams:
    stops = body.stop_list()
    if len(stops) > _MAX_STOP_SEQUENCES:
        raise bad_request(f"At most {_MAX_STOP_SEQUENCES} stop sequences are allowed.", param="stop")
    temperature = 1.0 if body.temperature is None else body.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        # Like vLLM: a temperature this small is greedy decoding (dividing by it overflows).
        temperature=0.0 if temperature < _GREEDY_BELOW_TEMPERATURE else temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        stop=tuple(stops),
    )


def _check_n(n: int, catalog: ModelCatalog) -> None:
    if n > catalog.max_n:
        raise bad_request(f"n is {n}; this server allows at most {catalog.max_n}.", param="n", code="invalid_value")


def _unsupported(param: str) -> APIError:
    return bad_request(f"{param} is not supported by this server.", param=param, code="unsupported_parameter")


async def prepare_chat(raw: bytes, engine: Engine, catalog: ModelCatalog) -> PreparedRequest:
    body = parse_body(raw, ChatCompletionRequest)
    if body.logprobs:
        raise _unsupported("logprobs")
    if body.tools:
        raise _unsupported("tools")
    adapter = catalog.resolve(body.model)
    _check_n(body.n, catalog)
    messages = [{"role": message.role, "content": message.text()} for message in body.messages]
    try:
        prompt = engine.render_chat(messages)
    except Exception as error:  # chat templates raise anything (jinja, ValueError)
        raise bad_request(f"The model's chat template rejected these messages: {error}", param="messages") from None
    prompt_ids = await _encode(engine, prompt, add_special_tokens=False)
    _check_prompt_fits(len(prompt_ids), catalog)
    requested = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = _max_tokens(requested, len(prompt_ids), catalog, default=None)
    return PreparedRequest(
        request_id=f"chatcmpl-{uuid.uuid4().hex}",
        kind="chat",
        model=body.model,
        base_model=catalog.base,
        adapter=adapter,
        prompt=prompt,
        prompt_token_ids=prompt_ids,
        sampling=_sampling(body, max_tokens),
        n=body.n,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        log_fields={"messages": messages},
    )


async def prepare_completion(raw: bytes, engine: Engine, catalog: ModelCatalog) -> PreparedRequest:
    body = parse_body(raw, CompletionRequest)
    if body.logprobs is not None:
        raise _unsupported("logprobs")
    if body.suffix is not None:
        raise _unsupported("suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise _unsupported("best_of")
    prompt = _single_prompt(body.prompt)
    adapter = catalog.resolve(body.model)
    _check_n(body.n, catalog)
    prompt_ids = await _encode(engine, prompt, add_special_tokens=True)
    _check_prompt_fits(len(prompt_ids), catalog)
    max_tokens = _max_tokens(body.max_tokens, len(prompt_ids), catalog, default=_DEFAULT_COMPLETION_MAX_TOKENS)
    return PreparedRequest(
        request_id=f"cmpl-{uuid.uuid4().hex}",
        kind="completion",
        model=body.model,
        base_model=catalog.base,
        adapter=adapter,
        prompt=prompt,
        prompt_token_ids=prompt_ids,
        sampling=_sampling(body, max_tokens),
        n=body.n,
        stream=body.stream,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
        echo=body.echo,
        log_fields={"prompt": prompt},
    )


def _single_prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) != 1:
        raise bad_request("Send one prompt per request (a string, or a list of exactly one).", param="prompt")
    return prompt[0]
