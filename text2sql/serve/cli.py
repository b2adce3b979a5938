"""`text2sql serve --run RUN [--best] [--host 127.0.0.1] [--port 8000] [--db-dir DIR] [--api-key KEY]`.

Loads the run once and serves it over HTTP (FastAPI on uvicorn, one process): OpenAI's /v1/chat/completions,
/v1/completions and /v1/models, /v1/sql (SQL plus its rows, run read-only through the evaluator's guard),
/v1/databases and /health. Safe by default: loopback only unless told, an API key required for any other host,
request limits, SIGTERM drains the requests in flight and exits 0. `--backend vllm` puts vLLM's server behind
the same routes on a GPU box (`text2sql.serve.vllm`). Startup lines go to stderr, then one line per request.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

from text2sql.errors import UserError
from text2sql.inference.predict import DEVICES

API_KEY_ENV = "TEXT2SQL_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="the training run dir to serve")
    parser.add_argument("--best", action="store_true",
                        help="serve the best epoch's checkpoint (metrics.json) instead of the final weights")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only); any other needs an API key")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one, printed)")
    parser.add_argument("--db-dir", type=Path, default=None,
                        help="databases requests may name by db_id: DIR/<db_id>/<db_id>.sqlite or DIR/<db_id>.sqlite")
    parser.add_argument("--api-key", default=None,
                        help=f"clients must send 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}); required "
                        "with a --host other than loopback")
    parser.add_argument("--model-name", default=None, help="the model name clients send (default: the run dir's name)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where generation runs (local backend)")
    parser.add_argument("--max-batch-size", type=int, default=None,
                        help="requests per generate call at most (default eval.batch_size)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to batch with (default 5 ms)")
    parser.add_argument("--max-question-chars", type=int, default=2000, help="longest question accepted (default 2000)")
    parser.add_argument("--max-tokens", type=int, default=512, help="cap on a request's max_tokens (default 512)")
    parser.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds a request may take in all (default 60); SQL also has eval.timeout")
    parser.add_argument("--backend", choices=("local", "vllm"), default="local",
                        help="local: the model in this process; vllm: vLLM's server (GPU) behind the same routes")
    parser.add_argument("--merged", type=Path, default=None,
                        help="vllm: serve this merged model dir (text2sql merge) instead of base + LoRA adapter")
    parser.add_argument("--upstream", default=None,
                        help="vllm: an OpenAI-compatible server already running (URL) instead of starting vLLM")
    parser.add_argument("--print-command", action="store_true",
                        help="vllm: print the `vllm serve` command and exit")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a key override of the run's config, e.g. -o eval.max_new_tokens=64")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_args(args: argparse.Namespace) -> str | None:
    """The API key in force; one line for settings that cannot work or are unsafe, before anything loads."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and not key:
        raise UserError(f"--host {args.host} opens the server to other machines: give --api-key KEY (or set "
                        f"{API_KEY_ENV}), or keep the default --host 127.0.0.1")
    if key is not None and len(key) < 8:
        raise UserError("--api-key: use at least 8 characters")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: not a port (0-65535)")
    for name in ("max_question_chars", "max_tokens", "request_timeout", "batch_wait_ms"):
        if getattr(args, name) < (0 if name == "batch_wait_ms" else 1e-9):
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if args.max_batch_size is not None and args.max_batch_size < 1:
        raise UserError("--max-batch-size must be >= 1")
    if args.backend != "vllm" and (args.merged or args.upstream or args.print_command):
        raise UserError("--merged, --upstream and --print-command go with --backend vllm")
    return key


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port is one line, not a failure after loading."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _check_installed() -> None:
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "httpx") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"text2sql serve needs {', '.join(missing)}: install the serve extra, "
                        "pip install -e '.[serve]'")


def _logging() -> None:
    log = logging.getLogger("text2sql.serve")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("text2sql serve: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _generator(args, spec, key: str | None, sock: socket.socket):
    """(generator, vLLM process or None) for the chosen backend."""
    if args.backend == "local":
        from text2sql.serve.engine import LocalGenerator

        return LocalGenerator(spec, args.device, args.db_dir), None
    from text2sql.serve import vllm

    spec.load_tokenizer()
    if args.upstream:
        return vllm.UpstreamGenerator(args.upstream, spec.name, key, len(spec.tokenizer)), None
    port = sock.getsockname()[1] + 1
    inner_key = secrets.token_urlsafe(24)
    proc = vllm.start_vllm(vllm.vllm_command(spec, port, args.merged), port, inner_key)
    return vllm.UpstreamGenerator(f"http://127.0.0.1:{port}", spec.name, inner_key, len(spec.tokenizer)), proc


def run(args: argparse.Namespace) -> int:
    from text2sql.serve.databases import Databases
    from text2sql.serve.engine import RunSpec

    key = check_args(args)
    _check_installed()
    spec = RunSpec(args.run, args.best, args.override, args.model_name)
    if args.print_command:
        from text2sql.serve.vllm import vllm_command

        import shlex

        print(shlex.join(vllm_command(spec, args.port + 1 if args.port else 8001, args.merged)))
        return 0
    databases = Databases(args.db_dir, spec.timeout)
    sock = listen(args.host, args.port)
    proc = None
    try:
        generator, proc = _generator(args, spec, key, sock)
        return _serve(args, spec, generator, databases, key, sock)
    finally:
        sock.close()
        if proc is not None:
            from text2sql.serve.vllm import stop_vllm

            stop_vllm(proc)


def _serve(args, spec, generator, databases, key, sock) -> int:
    import uvicorn

    from text2sql.serve.app import create_app
    from text2sql.serve.service import Limits, Service

    _logging()
    limits = Limits(max_question_chars=args.max_question_chars, max_tokens=args.max_tokens,
                    request_timeout=args.request_timeout)
    batch = args.max_batch_size or spec.batch_size
    service = Service(spec, generator, databases, limits, batch, args.batch_wait_ms / 1000)
    app = create_app(service, key)
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    where = f"on {generator.device}" if hasattr(generator, "device") else f"by {generator.backend}"
    print(f"text2sql serve: model {spec.name}: weights {spec.weights_line()}; template {spec.data_cfg.template}; "
          f"decoding {spec.decoding.strategy}; {where}", file=sys.stderr)
    print(f"text2sql serve: databases: {len(databases.files)}{f' under {databases.db_dir}' if databases.files else ''}"
          f"; batching up to {batch} requests, waiting {args.batch_wait_ms:g} ms; API key "
          f"{'required' if key else 'off (loopback only)'}", file=sys.stderr)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(args.request_timeout) + 5)
    server = uvicorn.Server(config)
    stopped = []
    signal.signal(signal.SIGTERM, lambda sig, frame: stopped.append(sig))  # uvicorn re-raises it after draining
    print(f"text2sql serve: serving on http://{host}:{port} (Ctrl-C or SIGTERM stops; requests in flight finish)",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if not server.started:
        raise UserError(f"the server did not start on {host}:{port} (see above)")
    print(f"text2sql serve: stopped after {service.http_requests} requests "
          f"({service.batcher.counters.generate_calls} generate calls)", file=sys.stderr, flush=True)
    return 0
