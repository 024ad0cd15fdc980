"""The OpenAI request bodies this server accepts, as strict pydantic models.

Like the OpenAI API, unknown parameters and wrong types are rejected (400), not ignored: the models
forbid extra fields and validate strictly (no "5" for 5). Parameters that OpenAI knows but this
server does not implement (tools, logprobs, images, ...) are rejected with a message naming them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextContentPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


StopSequences = Annotated[str, Field(min_length=1)]


class _SamplingFields(_Strict):
    """Fields shared by chat and text completions."""

    model: str = Field(description="A name from GET /v1/models: the base model or `<model>:<adapter>`.")
    max_tokens: int | None = Field(default=None, description="Tokens to generate; at least 1.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, description="Choices to generate; at most the server's max_n.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopSequences | list[StopSequences] | None = Field(default=None, description="Up to 4 stop strings.")
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, description="Alias of max_tokens (newer clients).")
    logprobs: bool | None = Field(default=None, description="Not supported; only false is accepted.")
    tools: list[dict[str, object]] | None = Field(default=None, description="Not supported; only [] is accepted.")
    tool_choice: Literal["none"] | None = None


class CompletionRequest(_SamplingFields):
    """POST /v1/completions."""

    prompt: str | list[str] = Field(description="The text to complete (a list of one string is accepted too).")
    echo: bool = False
    logprobs: int | None = Field(default=None, description="Not supported; only null is accepted.")
    suffix: str | None = Field(default=None, description="Not supported; only null is accepted.")
    best_of: int | None = Field(default=None, description="Not supported beyond best_of == n.")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every non-2xx answer has this body."""

    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
