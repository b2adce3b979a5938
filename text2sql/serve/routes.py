"""The generating routes: /v1/chat/completions, /v1/completions (OpenAI's wire format) and /v1/sql (SQL and rows)."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from text2sql.serve import wire
from text2sql.serve.service import ApiError, Service


def _chat_parts(service: Service, req: wire.ChatRequest):
    """(question, schema, history) of a chat: the last user message asks; earlier user/assistant pairs are the
    history; the schema is db_id, schema, or else the system message."""
    system = "\n".join(m.text() for m in req.messages if m.role in ("system", "developer")).strip()
    turns = [m for m in req.messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "the last message must be the user's question")
    history, pending = [], None
    for m in turns[:-1]:
        if m.role == "user":
            pending = m.text()
        elif pending is not None:
            history.append((pending, m.text()))
            pending = None
    schema = service.schema(req.db_id, req.db_schema)
    if schema is None and system:
        schema = service.schema(None, system)
    if schema is None:
        raise ApiError(400, "no schema: pass db_id (GET /v1/databases) or schema as extra body fields, or put the "
                       "CREATE TABLE statements in a system message")
    return service.check_question(turns[-1].text(), history), schema, history


def _one_choice(req) -> None:
    if req.n != 1:
        raise ApiError(400, "n must be 1: greedy decoding has one answer")


def add_routes(app: FastAPI, service: Service, guarded: list) -> None:

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(req: wire.ChatRequest, request: Request):
        service.check_model(req.model)
        _one_choice(req)
        question, schema, history = _chat_parts(service, req)
        service.check_strategy(req.decoding, schema)
        max_new = service.max_new_tokens(req.new_tokens())
        ids = await service.prompt(question, schema, history)
        done = await service.generate(ids, max_new, req.decoding, schema)
        request.state.batch_size = done.batch_size
        sql = done.prediction.sql
        return respond(wire.chat_response(service.spec.name, sql, len(ids), service.spec.count_tokens(sql)),
                       req.stream)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(req: wire.CompletionRequest, request: Request):
        service.check_model(req.model)
        _one_choice(req)
        prompts = req.prompts()
        if not prompts or len(prompts) > service.batcher.max_batch_size:
            raise ApiError(400, f"give 1 to {service.batcher.max_batch_size} prompts")
        schema = service.schema(req.db_id, req.db_schema)
        service.check_strategy(req.decoding, schema)
        max_new = service.max_new_tokens(req.new_tokens())
        sources = []
        for prompt in prompts:
            if schema is not None:  # the prompt is a question about that schema
                if not isinstance(prompt, str):
                    raise ApiError(400, "with db_id or schema, each prompt is a question (text, not token ids)")
                sources.append(await service.prompt(service.check_question(prompt), schema))
            else:  # a whole prompt, as the model reads it (vLLM's meaning of /v1/completions)
                ids = prompt if isinstance(prompt, list) else await service.in_io(service.spec.text_ids, prompt)
                sources.append(service.check_ids(ids))
        dones = await asyncio.gather(*(service.generate(ids, max_new, req.decoding, schema) for ids in sources))
        request.state.batch_size = max(d.batch_size for d in dones)
        sqls = [d.prediction.sql for d in dones]
        return respond(wire.completion_response(service.spec.name, sqls, sum(map(len, sources)),
                                                sum(service.spec.count_tokens(s) for s in sqls)), req.stream)

    @app.post("/v1/sql", dependencies=guarded)
    async def sql(req: wire.SqlRequest, request: Request):
        start = time.perf_counter()
        service.check_rows(req.max_rows)
        schema = service.schema(req.db_id, req.db_schema)
        if schema is None:
            raise ApiError(400, "say which database: db_id (GET /v1/databases) or schema (CREATE TABLE statements)")
        out = {"model": service.spec.name, "db_id": schema.db_id if schema.db_file else None,
               "question": req.question, "decoding": None, "candidates": 0, "batch_size": 0}
        timings = {"queue_s": 0.0, "generation_s": 0.0}
        if req.sql is not None:  # run the client's SQL: read-only, as generated SQL runs
            text = req.sql.strip()
            if len(text) > service.limits.max_schema_chars:
                raise ApiError(400, "sql above the length limit")
        else:
            history = req.turns()
            question = service.check_question(req.question, history)
            service.check_strategy(req.decoding, schema)
            max_new = service.max_new_tokens(req.max_tokens)
            ids = await service.prompt(question, schema, history)
            done = await service.generate(ids, max_new, req.decoding, schema)
            request.state.batch_size = done.batch_size
            text = done.prediction.sql
            out.update(decoding=done.prediction.strategy, candidates=done.prediction.candidates,
                       batch_size=done.batch_size)
            timings = {"queue_s": round(done.queue_s, 6), "generation_s": round(done.generation_s, 6)}
        result = await service.execute(schema, text, req.max_rows)
        timings["execution_s"] = result.pop("execution_s")
        timings["total_s"] = round(time.perf_counter() - start, 6)
        return {**out, "sql": text, **result, "truncated": result["row_count"] > len(result["rows"]),
                "timings": timings}


def respond(body: dict, stream: bool):
    """A JSON answer, or the same answer as server-sent events when the client asked to stream."""
    if stream:
        return StreamingResponse(wire.stream_events(body), media_type="text/event-stream")
    return body
