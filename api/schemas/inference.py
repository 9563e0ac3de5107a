"""Request and response shapes of /v1/chat/completions, /v1/completions and /v1/classifications.

Requests follow OpenAI's field names; anything we do not implement is refused by name (extra="forbid")
rather than silently ignored. `stream` is a strict bool. The request features (response formats, tools,
logprobs) have their own shapes in inference_features.py. Text the model
reads must be valid Unicode: JSON allows a lone surrogate escape ("\\ud800"), which no tokenizer can
encode, so it is refused here, naming the field, instead of failing inside the engine.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from api.schemas.inference_features import (
    ChoiceLogprobs,
    CompletionLogprobs,
    ResponseFormatField,
    ToolCall,
    ToolChoiceField,
    ToolsField,
)
from lorasp_core.data.formats import DatasetProblem
from lorasp_core.data.tool_calls import check_tool_call
from lorasp_core.serving.types import MAX_CHOICES, MAX_PENALTY, MAX_TOP_LOGPROBS

MAX_CLASSIFICATION_INPUTS = 256
MAX_STOP_SEQUENCES = 4
MAX_COMPLETION_LOGPROBS = 5  # the legacy completions endpoint's bound
# OpenAI's `seed` is a signed 64-bit integer (the engine's generator would take unsigned ones too).
MIN_SEED, MAX_SEED = -(2**63), 2**63 - 1


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be tokenized (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"contains a lone surrogate (U+{ord(text[error.start]):04X}) at position {error.start}"
    return None


def _valid_text(text: str) -> str:
    problem = unicode_problem(text)
    if problem is not None:
        raise ValueError(f"the text {problem}; send valid Unicode")
    return text


ModelText = Annotated[str, AfterValidator(_valid_text)]

StopField = Annotated[str | list[str] | None, Field(default=None)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # "developer" is OpenAI's newer name for "system"; legacy `function` turns are not supported.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # assistant turns only
    tool_call_id: str | None = None  # tool turns only: the call this is the result of

    @field_validator("content")
    @classmethod
    def _content_is_unicode(cls, value: str | list[TextPart] | None) -> str | list[TextPart] | None:
        # Checked here rather than on each union member, so the error names `content` itself.
        texts = [] if value is None else [value] if isinstance(value, str) else [part.text for part in value]
        for text in texts:
            _valid_text(text)
        return value

    @field_validator("tool_calls")
    @classmethod
    def _arguments_are_objects(cls, value: list[ToolCall] | None) -> list[ToolCall] | None:
        problems: list[DatasetProblem] = []
        for index, call in enumerate(value or []):
            check_tool_call(call.model_dump(), str(index), 0, problems)
        if problems:
            raise ValueError(f"tool_calls.{problems[0].field}: {problems[0].reason}")
        return value

    @model_validator(mode="after")
    def _role_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if (self.role == "tool") != (self.tool_call_id is not None):
            raise ValueError("tool messages need tool_call_id, and only they may have one")
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_engine_message(self) -> dict[str, Any]:
        """Template-ready (transformers' convention: tool-call arguments as dicts)."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text() if self.content is not None else None,
        }
        if self.tool_calls:
            problems: list[DatasetProblem] = []
            message["tool_calls"] = [
                check_tool_call(c.model_dump(), "", 0, problems) for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
            if self.name is not None:
                message["name"] = self.name
        return message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class _SamplingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: StopField
    seed: int | None = Field(default=None, ge=MIN_SEED, le=MAX_SEED)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    presence_penalty: float = Field(default=0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float = Field(default=0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        for stop in stops:
            _valid_text(stop)
        return value

    def stop_list(self) -> list[str] | None:
        if self.stop is None:
            return None
        return [self.stop] if isinstance(self.stop, str) else list(self.stop) or None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormatField
    tools: ToolsField
    tool_choice: ToolChoiceField = None
    parallel_tool_calls: StrictBool | None = None  # false: at most one tool call per choice

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, value: int | None, info: Any) -> int | None:
        if value is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _choice_needs_tools(cls, value: ToolChoiceField, info: Any) -> ToolChoiceField:
        tools = info.data.get("tools")
        if value not in (None, "none", "auto") and not tools:
            raise ValueError("tool_choice other than 'none' or 'auto' needs tools")
        names = {tool.function.name for tool in tools or []}
        if not isinstance(value, str) and value is not None and value.function.name not in names:
            raise ValueError(f"names the function {value.function.name!r}, which is not among the tools")
        return value

    def token_limit(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_SamplingRequest):
    prompt: ModelText
    max_tokens: int = Field(default=16, ge=1)  # OpenAI's legacy default
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)  # alternatives per token


class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_CLASSIFICATION_INPUTS)]

    @field_validator("input")
    @classmethod
    def _inputs_are_text(cls, value: str | list[str]) -> str | list[str]:
        # An empty text has no tokens to classify (the tiny tokenizer adds no [CLS]): refuse it by index.
        for index, text in enumerate([value] if isinstance(value, str) else value):
            where = "" if isinstance(value, str) else f"input[{index}]: "
            if not text:
                raise ValueError(f"{where}the text to classify must not be empty")
            problem = unicode_problem(text)
            if problem is not None:
                raise ValueError(f"{where}the text {problem}; send valid Unicode")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]
ChatFinishReason = Literal["stop", "length", "tool_calls"]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: ChatFinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Classification(BaseModel):
    index: int
    label: str
    score: float
    scores: dict[str, float]


class ClassificationList(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[Classification]


SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "JSON object, or with `stream: true` server-sent events ending with `data: [DONE]`",
    }
}
