"""What every route does between the wire and the model: limits, schemas, prompts, the batcher, execution.

Prompt building, schema reading and SQL execution run in a small pool of I/O threads (never on the event loop);
generation runs in the batcher's one thread. Every failure a client can cause is an `ApiError` (a status and
one line); `app` turns it into OpenAI's error body.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from text2sql.errors import UserError
from text2sql.serve.batching import Batcher, Done, Job
from text2sql.serve.databases import Databases, UnknownDatabase
from text2sql.serve.engine import RunSpec, Schema


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


@dataclass
class Limits:
    max_question_chars: int = 2000
    max_schema_chars: int = 100_000
    max_history_turns: int = 20
    max_tokens: int = 512  # cap on a request's max_tokens
    max_prompt_tokens: int = 8192  # a raw /v1/completions prompt
    max_rows: int = 1000  # cap on /v1/sql's max_rows
    request_timeout: float = 60.0  # seconds from arrival to answer
    max_body_bytes: int = 1_000_000


class Service:
    def __init__(self, spec: RunSpec, generator, databases: Databases, limits: Limits, max_batch_size: int,
                 batch_timeout: float) -> None:
        self.spec, self.generator, self.databases, self.limits = spec, generator, databases, limits
        self.batcher = Batcher(generator.generate, max_batch_size, batch_timeout)
        self.io = ThreadPoolExecutor(max_workers=2, thread_name_prefix="text2sql-io")
        self.started = int(time.time())
        self.http_requests = 0
        self.in_flight = 0  # requests being answered (a /health call counts itself)

    async def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.io.shutdown(wait=True)
        self.databases.close()
        close = getattr(self.generator, "close", None)
        if close is not None:
            close()

    async def in_io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    # -- checks ----------------------------------------------------------------------------------------------
    def check_model(self, model: str) -> None:
        if model != self.spec.name:
            raise ApiError(404, f"model {model!r} not found: this server serves {self.spec.name!r} "
                           "(GET /v1/models)", "not_found_error", "model_not_found")

    def max_new_tokens(self, asked: int | None) -> int:
        if asked is not None and asked > self.limits.max_tokens:
            raise ApiError(400, f"max_tokens={asked} is above this server's cap of {self.limits.max_tokens} "
                           "(text2sql serve --max-tokens)")
        return asked or min(self.spec.max_new_tokens, self.limits.max_tokens)

    def check_strategy(self, strategy: str | None, schema: Schema | None) -> None:
        from text2sql.config.decoding import STRATEGIES, Decoding

        if strategy is None:
            strategy = self.spec.decoding.strategy
        elif strategy not in STRATEGIES:
            raise ApiError(400, f"decoding {strategy!r} is not one of {', '.join(STRATEGIES)}")
        if Decoding(strategy=strategy).executes and (schema is None or schema.db_file is None):
            raise ApiError(400, f"decoding {strategy} runs its candidates on the database: give a db_id")

    def check_question(self, question: str, history=()) -> str:
        question = (question or "").strip()
        if not question:
            raise ApiError(400, "empty question: ask something, e.g. \"How many singers do we have?\"")
        if len(question) > self.limits.max_question_chars:
            raise ApiError(400, f"question of {len(question)} characters is above the limit of "
                           f"{self.limits.max_question_chars} (text2sql serve --max-question-chars)")
        if len(history) > self.limits.max_history_turns:
            raise ApiError(400, f"{len(history)} earlier turns is above the limit of {self.limits.max_history_turns}")
        for q, sql in history:
            if len(q) + len(sql) > self.limits.max_question_chars * 2:
                raise ApiError(400, "an earlier turn is above the question length limit")
        return question

    def schema(self, db_id: str | None, text: str | None, verbatim: bool = False) -> Schema | None:
        """The schema a request names (db_id) or gives (text); None when it does neither."""
        if db_id is not None and text is not None:
            raise ApiError(400, "give db_id or schema, not both")
        if db_id is not None:
            try:
                return self.databases.schema(db_id)
            except UnknownDatabase as err:
                raise ApiError(404, str(err), "not_found_error", "database_not_found") from None
        if text is not None:
            if not text.strip():
                raise ApiError(400, "empty schema: give CREATE TABLE statements or the schema's text")
            if len(text) > self.limits.max_schema_chars:
                raise ApiError(400, f"schema of {len(text)} characters is above the limit of "
                               f"{self.limits.max_schema_chars}")
            return self.databases.schema_from_text(text, verbatim)
        return None

    def check_ids(self, ids: list[int]) -> list[int]:
        vocab = getattr(self.generator, "vocab_size", 0) or len(self.spec.tokenizer)
        if not ids:
            raise ApiError(400, "empty prompt")
        if len(ids) > self.limits.max_prompt_tokens:
            raise ApiError(400, f"prompt of {len(ids)} tokens is above the limit of {self.limits.max_prompt_tokens}")
        if any(not 0 <= i < vocab for i in ids):
            raise ApiError(400, f"prompt token ids must lie in [0, {vocab})")
        return ids

    # -- the pipeline ----------------------------------------------------------------------------------------
    async def prompt(self, question: str, schema: Schema, history=()) -> list[int]:
        return await self.in_io(self.spec.prompt_ids, question, schema, list(history))

    async def generate(self, ids: list[int], max_new_tokens: int, strategy: str | None,
                       schema: Schema | None) -> Done:
        job = Job(ids, max_new_tokens, strategy, (schema.db_file or "") if schema else "")
        try:
            return await self.batcher.submit(job)
        except UserError as err:  # e.g. a strategy this adapter cannot decode with
            raise ApiError(400, str(err)) from None

    def check_rows(self, max_rows: int) -> int:
        if max_rows > self.limits.max_rows:
            raise ApiError(400, f"max_rows={max_rows} is above this server's cap of {self.limits.max_rows}")
        return max_rows

    async def execute(self, schema: Schema, sql: str, max_rows: int) -> dict:
        if schema.db_file is None:
            return {"status": "not_executed", "error": "no database: the schema was given as text (use a db_id "
                    "to run the SQL)", "columns": [], "rows": [], "row_count": 0, "execution_s": 0.0}
        return await self.in_io(self.databases.execute, schema.db_file, sql, max_rows)

    def health(self) -> dict:
        return {"status": "ok", "model": self.spec.name, "backend": self.generator.backend,
                "weights": self.spec.weights_line(), "databases": len(self.databases.files),
                "max_batch_size": self.batcher.max_batch_size, "http_requests": self.http_requests,
                "in_flight": self.in_flight,
                **self.batcher.counters.as_dict()}
