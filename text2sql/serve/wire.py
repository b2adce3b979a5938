"""The wire format: OpenAI's chat and completions requests and responses (the fields the official client sends and
reads), and our /v1/sql. Pydantic models check types; `app` checks the limits.

Where the schema comes from, for OpenAI requests: `db_id` (a database under `--db-dir`) or `schema` (CREATE
statements or schema text) as extra body fields (the `openai` client's `extra_body=`); else, in chat, a system
message holding the schema. Sampling fields (temperature, top_p, ...) are accepted and ignored: the run's
decoding answers (greedy unless the run says otherwise), or a `decoding` field naming a strategy.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text or "" for p in self.content if p.type == "text")
        return self.content or ""


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    db_id: str | None = None
    db_schema: str | None = Field(default=None, alias="schema")
    decoding: str | None = None

    def new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_OpenAIRequest):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_OpenAIRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]]

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)


class HistoryTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str
    sql: str


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    question: str = ""
    db_id: str | None = None
    db_schema: str | None = Field(default=None, alias="schema")
    history: list[Union[HistoryTurn, tuple[str, str]]] = Field(default_factory=list)
    decoding: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_rows: int = Field(default=20, ge=0)
    sql: str | None = None  # run this SQL (read-only) instead of generating: an edited or earlier answer

    def turns(self) -> list[tuple[str, str]]:
        return [(t.question, t.sql) if isinstance(t, HistoryTurn) else (t[0], t[1]) for t in self.history]


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    """OpenAI's error shape: the `openai` client raises it as BadRequestError etc. with this message."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_response(model: str, sql: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": sql}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, completion_tokens)}


def completion_response(model: str, sqls: list[str], prompt_tokens: int, completion_tokens: int) -> dict:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": None,
            "choices": [{"index": i, "text": sql, "logprobs": None, "finish_reason": "stop"}
                        for i, sql in enumerate(sqls)],
            "usage": _usage(prompt_tokens, completion_tokens)}


def stream_events(body: dict):
    """A finished answer as server-sent events, for clients that ask `stream=True`: the whole text in one chunk, a
    closing chunk with the finish reason, then [DONE]."""
    chat = body["object"] == "chat.completion"
    head = {"id": body["id"], "object": "chat.completion.chunk" if chat else "text_completion",
            "created": body["created"], "model": body["model"]}
    for choice in body["choices"]:
        i = choice["index"]
        if chat:
            first = {"index": i, "delta": {"role": "assistant", "content": choice["message"]["content"]},
                     "finish_reason": None}
            last = {"index": i, "delta": {}, "finish_reason": "stop"}
        else:
            first = {"index": i, "text": choice["text"], "finish_reason": None}
            last = {"index": i, "text": "", "finish_reason": "stop"}
        yield f"data: {json.dumps({**head, 'choices': [first]})}\n\n"
        yield f"data: {json.dumps({**head, 'choices': [last]})}\n\n"
    yield "data: [DONE]\n\n"


def models_response(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "text2sql"}]}
