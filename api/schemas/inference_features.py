"""OpenAI's request features on /v1/chat/completions and /v1/completions: response formats, tools,
tool calls in messages, and the logprob / tool-call shapes of the answers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorasp_core.data.tool_calls import FUNCTION_NAME
from lorasp_core.serving import ResponseFormat, TokenLogprob, ToolChoice, TopLogprob

FunctionName = Annotated[str, Field(pattern=f"^{FUNCTION_NAME.pattern}$")]  # pydantic searches: anchor it
MAX_TOOLS = 128


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    # `schema` is OpenAI's name; it shadows a BaseModel attribute, hence the alias.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: FunctionName
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatField = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat | None, Field(default=None, discriminator="type")
]


def engine_response_format(
    value: TextFormat | JsonObjectFormat | JsonSchemaFormat | None,
) -> ResponseFormat | None:
    if value is None or isinstance(value, TextFormat):
        return None
    if isinstance(value, JsonObjectFormat):
        return ResponseFormat(type="json_object")
    spec = value.json_schema
    return ResponseFormat(type="json_schema", schema=spec.json_schema, strict=bool(spec.strict))


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition

    def as_engine_tool(self) -> dict[str, Any]:
        return {"type": "function", "function": self.function.model_dump(exclude_none=True)}


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: NamedFunction


ToolsField = Annotated[list[ToolDefinition] | None, Field(default=None, min_length=1, max_length=MAX_TOOLS)]
ToolChoiceField = Literal["auto", "none", "required"] | NamedToolChoice | None


def engine_tool_choice(
    value: Literal["auto", "none", "required"] | NamedToolChoice | None,
) -> ToolChoice | None:
    if value is None:
        return None
    if isinstance(value, NamedToolChoice):
        return ToolChoice(mode="function", name=value.function.name)
    return ToolChoice(mode=value)


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str  # a JSON object as text


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None
    refusal: None = None


def _top(entry: TopLogprob) -> TopLogprobOut:
    return TopLogprobOut(token=entry.token, logprob=entry.logprob, bytes=entry.bytes)


def chat_logprobs(entries: list[TokenLogprob]) -> ChoiceLogprobs:
    content = [
        TokenLogprobOut(
            token=e.token, logprob=e.logprob, bytes=e.bytes, top_logprobs=[_top(t) for t in e.top_logprobs]
        )
        for e in entries
    ]
    return ChoiceLogprobs(content=content)


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists, `text_offset` = each token's start in the text."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


def completion_logprobs(entries: list[TokenLogprob], start: int = 0) -> CompletionLogprobs:
    offsets: list[int] = []
    position = start
    for entry in entries:
        offsets.append(position)
        position += len(entry.token)
    return CompletionLogprobs(
        tokens=[e.token for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries],
        text_offset=offsets,
    )
