"""`text2sql serve`: a trained run behind an OpenAI-compatible HTTP API (FastAPI + uvicorn, one process).

A folder per concern: `engine` loads the run once and turns questions into prompt ids and prompt ids into SQL
(the `ask` / `predict` code paths), `databases` finds and runs databases read-only through the evaluator's guard,
`batching` groups concurrent requests into one generate call, `wire` is the request/response format, `app` the
routes, limits and logs, `vllm` the command (and client) for vLLM on a GPU box, `cli` the verb.
"""
