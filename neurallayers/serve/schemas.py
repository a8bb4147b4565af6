"""Request and response bodies of the HTTP API, as pydantic models (they are also the OpenAPI schema).

Requests are strict: wrong JSON types are not coerced ("0.5" is not a number, true is not 1), NaN and infinity are
refused, and unknown fields are errors (a misspelt `temprature` must not be silently ignored). `null` in an optional
field means its default, as OpenAI's API reads it (clients such as LangChain send `"temperature": null`); so does
`null` in an OpenAI field this server does not implement (`"tools": null`), while a value there is refused. Ranges that
do not depend on the model are checked here; those that do (context length, vocabulary) in params.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from neurallayers.data.corpora import lone_surrogate

MAX_N = 16  # choices per prompt
MAX_STOP = 16  # stop strings per request
MAX_LOGPROBS = 20  # alternatives per token (GenerationConfig's limit)
MAX_SEED = 2**63 - 1
MIN_SEED = -(2**63)  # vLLM's range: a 64-bit signed integer


def _unicode(text: str) -> str:
    # JSON can escape a lone surrogate ("\ud83d"): no tokenizer encodes it and no response can echo it as UTF-8
    if bad := lone_surrogate(text):
        raise PydanticCustomError("lone_surrogate", "a lone surrogate (U+{code}) at position {pos} is not valid "
                                  "Unicode: send UTF-8 text", {"code": f"{ord(bad[0]):04X}", "pos": bad.start()})
    return text


Text = Annotated[str, AfterValidator(_unicode)]  # every text field that reaches a tokenizer or a file path
StopText = Annotated[Text, Field(min_length=1)]


def _keeps_a_token(value: int) -> int:
    if value == 0:
        raise PydanticCustomError("truncation", "0 would cut the whole prompt: give -1 (the context length) or a "
                                  "number of tokens to keep, at least 1", {})
    return value


Truncation = Annotated[int, Field(ge=-1), AfterValidator(_keeps_a_token)]  # -1 as vLLM takes it, or at least 1
TruncationSide = Literal["left", "right"]
SIDE = ("vLLM's: which end truncate_prompt_tokens cuts: \"left\" keeps the last k tokens, \"right\" the first k, both "
        "counting the special tokens as tokens; default: the tokenizer's cut (the last k, a bos kept first)")
Bias = Annotated[float, Field(ge=-100, le=100)]


def _prompt_shape(value) -> str | None:
    """The Prompt member a value can be, by its type and its first item's; None: none of them."""
    if isinstance(value, str):
        return "str"
    if not isinstance(value, list):
        return None
    return {str: "list[str]", int: "list[int]", list: "list[list[int]]"}.get(type(value[0]) if value else int)


# Validated as the one member its shape names: a plain union tries every member on the whole list, and one that fails
# makes an error per item (15M token ids, inside the 32 MiB body limit, held the event loop and /health for 13 s).
Prompt = Annotated[
    Annotated[Text, Tag("str")] | Annotated[list[Text], Tag("list[str]")] | Annotated[list[int], Tag("list[int]")]
    | Annotated[list[list[int]], Tag("list[list[int]]")],
    Discriminator(_prompt_shape, custom_error_type="prompt_type",
                  custom_error_message="must be a string, a list of strings, a list of token ids or a list of "
                  "token-id lists")]
# OpenAI request fields this server does not implement: refused with a value, ignored when null
UNSUPPORTED = frozenset({
    "audio", "function_call", "functions", "metadata", "modalities", "parallel_tool_calls", "prediction",
    "reasoning_effort", "service_tier", "store", "suffix", "tool_choice", "tools", "web_search_options",
    "moderation", "prompt_cache_options", "prompt_cache_retention", "verbosity",
    # vLLM's extra parameters that have no rule here: structured output, token filters, prompt logprobs, templates
    "guided_json", "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend",
    "guided_whitespace_pattern", "structural_tag", "structured_outputs", "allowed_token_ids", "bad_words",
    "prompt_logprobs", "logits_processors", "chat_template", "documents", "mm_processor_kwargs",
    "return_tokens_as_token_ids", "vllm_xargs",
    # vLLM's request fields for what this server has no part of (scheduling, tracing, disaggregation, token offsets,
    # reasoning): named as unsupported, not as a misspelling
    "priority", "request_id", "session_id", "cache_salt", "kv_transfer_params", "ec_transfer_params",
    "return_token_offsets", "logprob_token_ids", "prompt_embeds",
    "watermarking", "repetition_detection", "thinking_token_budget", "stream_interval", "include_reasoning",
    "media_io_kwargs", "embed_dtype"})
# Values of unimplemented fields that ask for what this server does anyway (no tools, no tool call, nothing stored, text
# only), as vLLM takes them: some clients send them on every request
AS_SERVED = {"tools": [], "functions": [], "tool_choice": "none", "function_call": "none", "store": False,
             "modalities": ["text"]}
# vLLM's extra parameters taken at their default value only (the behaviour this server has), refused at any other
VLLM_DEFAULT_ONLY = {"use_beam_search": False, "length_penalty": 1.0}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class OpenAIRequest(Strict):
    """A request body of an OpenAI route: `null` in an optional field (or an unimplemented one) is its default."""

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        if not isinstance(data, dict):
            return data
        optional = {name for name, field in cls.model_fields.items() if not field.is_required()}
        return {k: v for k, v in data.items()
                if (v is not None or (k not in optional and k not in UNSUPPORTED))
                and not (k in AS_SERVED and k not in cls.model_fields and v == AS_SERVED[k])}


def _no_obfuscation(value: bool) -> bool:
    if value:
        raise PydanticCustomError("obfuscation", "not supported by this server: its chunks carry no obfuscation "
                                  "field (only false)", {})
    return value


class StreamOptions(OpenAIRequest):
    include_usage: bool | None = Field(None, description="send a last chunk with the usage of the whole request; "
                                       "default: only with continuous_usage_stats")
    # OpenAI's padding of chunks against length side channels: false asks for what this server sends
    include_obfuscation: Annotated[bool, AfterValidator(_no_obfuscation)] = Field(
        False, description="OpenAI's; only false: chunks carry no obfuscation field",
        json_schema_extra={"enum": [False]})
    continuous_usage_stats: bool = Field(False, description="vLLM's: every chunk also carries its choice's usage so "
                                         "far (needs include_usage, which it turns on when that is not sent)")

    @model_validator(mode="after")
    def _continuous_needs_usage(self) -> StreamOptions:
        if self.continuous_usage_stats and self.include_usage is False:  # vLLM sends neither then, silently
            raise PydanticCustomError("continuous_usage", "continuous_usage_stats needs include_usage: true (or "
                                      "include_usage left out)", {})
        return self

    @property
    def usage(self) -> bool:
        return bool(self.include_usage) or self.continuous_usage_stats


class Sampling(OpenAIRequest):
    """Fields shared by /v1/completions and /v1/chat/completions (OpenAI names and ranges)."""

    model: str | None = Field(None, description="the served model's id (GET /v1/models); default: that model")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most; prompt + max_tokens must "
                                   "fit the context length")
    temperature: float = Field(1.0, ge=0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=-1, description="0 or -1 (vLLM's) disables it")
    min_p: float = Field(0.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N, description="choices per prompt")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="only equal to n: choosing the best of more is not "
                                "supported")
    min_tokens: int = Field(0, ge=0, description="end-of-text and stop_token_ids are held back until this many "
                            "tokens are generated, and a stop string counts only where it ends after them (vLLM's)")
    truncate_prompt_tokens: Truncation | None = Field(None, description="keep only the last k tokens of each prompt; "
                                                      "-1: as many as the context length holds beside max_tokens "
                                                      "(vLLM's)")
    truncation_side: TruncationSide | None = Field(None, description=SIDE)
    return_token_ids: bool = Field(False, description="vLLM's: also return the prompt's token ids "
                                   "(prompt_token_ids) and each choice's generated ones (token_ids); streamed: the "
                                   "prompt's on a choice's first chunk, each chunk's new ids")
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = Field(
        None, description="generation ends before the first of these strings, which is not returned (unless "
        "include_stop_str_in_output); stop_reason names it")
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="token ids that end generation, as eos does (vLLM's); the token's text is not returned "
        "(unless include_stop_str_in_output); stop_reason names it")
    ignore_eos: bool = Field(False, description="generate past end-of-text (vLLM's)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=MIN_SEED, le=MAX_SEED, description="choice k samples with seed + k; -1 "
                             "(vLLM's) means none")
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0, description="1 disables it")
    logit_bias: dict[str, Bias] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    user: str | None = Field(None, description="accepted and ignored")
    response_format: dict | None = Field(None, description='only {"type": "text"}: output is never constrained')
    # vLLM's parameters taken at their default only: the schema says so (enum), the check names the field
    use_beam_search: bool = Field(False, description="vLLM's; only false", json_schema_extra={"enum": [False]})
    length_penalty: float = Field(1.0, description="vLLM's (beam search); only 1", json_schema_extra={"enum": [1.0]})
    include_stop_str_in_output: bool = Field(False, description="vLLM's: the stop string that ends a choice is "
                                             "returned too, and a stop_token_ids token's text")
    skip_special_tokens: bool = Field(True, description="vLLM's: false writes special tokens in the text")
    spaces_between_special_tokens: bool = Field(True, description="vLLM's: false only with skip_special_tokens "
                                                "true, where it changes nothing (as in vLLM)")


class CompletionRequest(Sampling):
    prompt: Prompt = Field(description="a string, a list of strings, a list of token ids or a list of token-id lists")
    max_tokens: int | None = Field(None, ge=0, description="tokens to generate at most (default 16); prompt + "
                                   "max_tokens must fit the context length; 0 only with echo: the prompt alone, "
                                   "scored with logprobs, nothing generated (OpenAI's legacy API and vLLM)")
    echo: bool = Field(False, description="return the prompt before the completion")
    add_special_tokens: bool = Field(True, description="run a text prompt through the tokenizer's post-processor (a "
                                     "bos), as vLLM does")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="log-probabilities of the chosen token "
                                 "and of this many alternatives")


class TextPart(Strict):
    type: Literal["text"]
    text: Text


class RefusalPart(Strict):
    """An assistant's refusal as OpenAI writes it in content; a text part to the template, as vLLM reads it."""

    type: Literal["refusal"]
    refusal: Text

    @property
    def text(self) -> str:
        return self.refusal


Part = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


class FunctionCall(Strict):
    name: Text = Field(min_length=1)
    arguments: Text = Field(description="the arguments as JSON text, as OpenAI returns them; the template gets them "
                            "parsed (an empty text: {}), as vLLM hands them over")


class ToolCall(Strict):
    """A tool call of an assistant message, as OpenAI returns it and a client sends it back as history."""

    id: Text
    type: Literal["function"]
    function: FunctionCall


# a message's fields that only one role has, as OpenAI's message types hold them
ROLE_FIELDS = {"tool_calls": "assistant", "refusal": "assistant", "reasoning": "assistant",
               "reasoning_content": "assistant", "tool_call_id": "tool"}


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[Part] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="an assistant's calls, passed to the template")
    tool_call_id: Text | None = Field(None, description="a tool message's: the call it answers")
    refusal: Text | None = Field(None, description="an assistant's, as OpenAI returns it; not shown to the template "
                                 "(as in vLLM)")
    reasoning: Text | None = Field(None, description="an assistant's reasoning (vLLM's), for templates that show it")
    reasoning_content: Text | None = Field(None, description="the older name of reasoning")

    @model_validator(mode="after")
    def _fields_of_the_role(self) -> ChatMessage:
        for field, role in ROLE_FIELDS.items():
            if getattr(self, field) is not None and self.role != role:
                raise PydanticCustomError("role_field", "{field} belongs to a message of role \"{role}\", not "
                                          "\"{got}\"", {"field": field, "role": role, "got": self.role})
        return self

    @model_validator(mode="before")
    @classmethod
    def _null_fields_are_absent(cls, data):
        """A message the openai client returned, passed back as history, holds tool_calls, refusal, audio, ... as
        null: absent, as in a request body (a non-null one is still refused, naming it)."""
        if not isinstance(data, dict):
            return data
        return {k: v for k, v in data.items() if v is not None or k in cls.model_fields}


class FunctionSpec(Strict):
    name: Text = Field(min_length=1)
    description: Text | None = None
    parameters: dict | None = Field(None, description="the arguments' JSON schema")
    strict: bool | None = None


class ChatTool(Strict):
    """A tool as OpenAI's API describes one; it reaches the chat template's `tools` as it was sent."""

    type: Literal["function"]
    function: FunctionSpec


Documents = list[dict[str, Text]]  # vLLM's documents: {"title": ..., "text": ...}
TEMPLATE = ("vLLM's: the chat template for this request, a name of the tokenizer's (tool_use, rag ...) or Jinja text; "
            "needs the server started with --trust-request-chat-template")
DOCUMENTS = "vLLM's: documents for the template's `documents` (retrieval-augmented templates), e.g. {title, text}"
TOOLS = ("tools the chat template shows the model; only with tool_choice \"none\": the reply is plain text, never "
         "parsed into tool_calls")


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="the newer name of max_tokens")
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="needs logprobs: true")
    echo: bool = Field(False, description="vLLM's: when the last message is the assistant's, the reply starts with "
                       "its content")
    add_generation_prompt: bool = Field(True, description="vLLM's: end the prompt with the template's cue for the "
                                        "assistant's reply (false: the reply's role is the last message's, as in vLLM)")
    add_special_tokens: bool = Field(False, description="vLLM's: also the tokenizer's special tokens (a bos) around "
                                     "the rendered prompt, which holds the template's own")
    continue_final_message: bool = Field(False, description="vLLM's: the reply continues the last message, which must "
                                         "be the assistant's (the prompt ends with its content); not with "
                                         "add_generation_prompt true, which it turns off when that is not sent")
    chat_template_kwargs: dict | None = Field(None, description="vLLM's: extra variables for the chat template, e.g. "
                                              '{"enable_thinking": false}; not messages or special-token names')
    chat_template: Text | None = Field(None, description=TEMPLATE)
    documents: Documents | None = Field(None, description=DOCUMENTS)
    tools: list[ChatTool] | None = Field(None, description=TOOLS)
    tool_choice: Literal["none", "auto", "required"] | dict | None = Field(
        None, description='only "none" (vLLM without a tool-call parser): tools reach the template, the reply is text')
    # OpenAI's replacements of `user`: labels of the caller, which change no output (there is no prompt cache here)
    safety_identifier: str | None = Field(None, description="accepted and ignored, as user")
    prompt_cache_key: str | None = Field(None, description="accepted and ignored: this server keeps no prompt cache")


class EmbeddingRequest(OpenAIRequest):
    input: Prompt = Field(description="a string or a list of strings (encoder models only)")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="must equal the model's width when given")
    user: str | None = None
    truncate_prompt_tokens: Truncation | None = Field(None, description="keep only the last k tokens of each input, "
                                                      "its special tokens among them; -1: max_model_len (vLLM's); "
                                                      "without it a longer input is refused, as vLLM and OpenAI do")
    truncation_side: TruncationSide | None = Field(None, description="vLLM's: which end truncate_prompt_tokens "
                                                   "cuts: \"left\" keeps the last k ids ([CLS] among those cut), "
                                                   "\"right\" cuts the end as the tokenizer does ([CLS] and [SEP] "
                                                   "kept); default: the tokenizer's cut of the start")
    normalize: bool | None = Field(None, description="L2-normalize each vector (vLLM's); default: the model's own "
                                   "(a sentence-transformers folder without Normalize gives raw vectors)")
    add_special_tokens: bool = Field(True, description="vLLM's: the tokenizer's special tokens ([CLS], [SEP]) frame "
                                     "each input; false embeds the text's own tokens alone")


class TokenizeRequest(OpenAIRequest):
    """vLLM's /tokenize: a prompt's ids as /v1/completions reads them, or a chat's as /v1/chat/completions does (the
    chat options mean what they mean there)."""

    model: str | None = None
    prompt: Text | None = Field(None, description="text to tokenize (give this or messages)")
    messages: list[ChatMessage] | None = Field(None, description="a chat, rendered with the chat template")
    add_special_tokens: bool | None = Field(None, description="run the text through the tokenizer's post-processor "
                                            "(a bos); default: true for a prompt, false for messages (the template "
                                            "writes its own), as vLLM and the generating routes do")
    return_token_strs: bool = Field(False, description="also return each id's token string (vLLM's)")
    add_generation_prompt: bool = Field(True, description="messages only: as in /v1/chat/completions")
    continue_final_message: bool = Field(False, description="messages only: as in /v1/chat/completions")
    chat_template_kwargs: dict | None = Field(None, description="messages only: as in /v1/chat/completions")
    chat_template: Text | None = Field(None, description="messages only: as in /v1/chat/completions")
    documents: Documents | None = Field(None, description="messages only: as in /v1/chat/completions")
    tools: list[ChatTool] | None = Field(None, description="messages only: the tools the chat template shows")


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[int] = Field(description="token ids; special ones are kept in the text, as vLLM decodes them, so "
                              "the text tokenizes back to these ids")


class PredictRequest(Strict):
    """A plain JSON generation (decoder) or embedding (encoder) of one text."""

    prompt: Text = Field(min_length=1)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0, description="0 (the default here) means greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class BatchPredictRequest(Strict):
    prompts: list[Annotated[Text, Field(min_length=1)]] = Field(min_length=1, max_length=256)
    max_tokens: int = Field(16, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class ReloadRequest(Strict):
    model: Text = Field(min_length=1, description="a model folder, relative to the server's --model-root")


# ----- responses (documentation and a check on what we send) -----
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


STOP_REASON = "vLLM's: the stop string or stop_token_ids id that ended the choice; null on eos or length"


TOKEN_IDS = "vLLM's, with return_token_ids: every token the model chose (a final stop token and a stop string's too)"
PROMPT_IDS = "vLLM's, with return_token_ids: the prompt's token ids, as the model read them"


def _only_sent(value) -> bool:
    return value is None  # a field sent only when asked for (return_token_ids): absent, not null, otherwise


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None
    stop_reason: str | int | None = Field(None, description=STOP_REASON)
    prompt_token_ids: list[int] | None = Field(None, description=PROMPT_IDS, exclude_if=_only_sent)
    token_ids: list[int] | None = Field(None, description=TOKEN_IDS, exclude_if=_only_sent)


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprobOut] | None


class AssistantMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"] = "assistant"  # another with
    # add_generation_prompt false: the last message's, as vLLM names it
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    stop_reason: str | int | None = Field(None, description=STOP_REASON)
    token_ids: list[int] | None = Field(None, description=TOKEN_IDS, exclude_if=_only_sent)


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = Field(None, description=PROMPT_IDS, exclude_if=_only_sent)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "neurallayers"
    root: str | None = Field(None, description="vLLM's: the model this one is built on; here the model itself")
    parent: str | None = Field(None, description="vLLM's: the base model of an adapter; none here")
    max_model_len: int
    kind: Literal["decoder", "encoder"]

    @model_validator(mode="after")
    def _root_is_the_model(self) -> ModelCard:
        # vLLM names a served model's source in root (clients read it beside id); no adapters here, so it is the id
        if self.root is None:
            self.root = self.id
        return self


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    token_strs: list[str] | None = Field(None, description="with return_token_strs: each id's token string")


class Version(BaseModel):
    version: str


class DetokenizeResponse(BaseModel):
    prompt: str


class Prediction(BaseModel):
    text: str | None = None
    finish_reason: str | None = None
    embedding: list[float] | None = None
    usage: Usage


class BatchPrediction(BaseModel):
    predictions: list[Prediction]


class Health(BaseModel):
    status: str
    model: str | None = None


class ReloadResponse(BaseModel):
    model: str
    previous: str
