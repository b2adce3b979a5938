"""`text2sql serve --backend vllm`: vLLM's OpenAI server on a GPU box, with our routes in front of it.

`vllm_command` builds the exact `vllm serve` command for a run: its base model with the adapter as a LoRA module
(named as the run is served, so clients send the same model name to either backend), or a merged model dir
(`text2sql merge`); the run's prompt template as a one-line Jinja chat template for clients that talk to vLLM's
chat route; vLLM on loopback behind a per-start key (passed in the environment, never on the command line).
Our front keeps every route: prompts are built here exactly as for the local backend and sent as token ids to
vLLM's /v1/completions (`UpstreamGenerator`), so /v1/sql executes through the evaluator's guard as before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from text2sql.errors import UserError

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts
DTYPES = ("float16", "bfloat16", "float32")


def _literal(text: str) -> str:
    """A Jinja string literal (JSON's escapes are Jinja's)."""
    return json.dumps(text)


def chat_template(template: str, system_prompt: str | None) -> str | None:
    """The run's prompt template (`data.prompt.TEMPLATES`) as a one-line Jinja chat template: the same text as
    `Template.pieces` for a conversation (system turn, earlier user/assistant turns, the question); None for
    `template=chat`, whose tokenizer carries its own."""
    from text2sql.data.prompt import get_template

    tpl = get_template(template)
    if tpl.chat:
        return None
    system = tpl.default_system if system_prompt is None else system_prompt
    first_head, first_tail = tpl.source.split("{prompt}")
    turn_head, turn_tail = tpl.turn.split("{prompt}")
    before, _, after = first_head.partition("{system}")
    system_part = "{{ ns.system }}{{ " + _literal(after) + " }}" if "{system}" in first_head else ""
    bos = "{{ bos_token }}" if tpl.add_bos else ""
    return ("{% set ns = namespace(system=" + _literal(system) + ", first=true) %}"
            "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}{% endif %}"
            "{% endfor %}"
            "{% for m in messages %}{% if m['role'] == 'user' %}" + bos +
            "{% if ns.first %}{{ " + _literal(before) + " }}" + system_part + "{{ m['content'] }}"
            "{{ " + _literal(first_tail) + " }}{% set ns.first = false %}"
            "{% else %}{{ " + _literal(turn_head) + " }}{{ m['content'] }}{{ " + _literal(turn_tail) + " }}{% endif %}"
            "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def _lora_problem(adapter: Path) -> tuple[dict, str | None]:
    """(adapter_config, why vLLM cannot load it as a LoRA module or None)."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        return config, f"a {config.get('peft_type')} adapter is not LoRA"
    if config.get("use_dora"):
        return config, "vLLM serves no DoRA adapters"
    if config.get("modules_to_save"):
        saved = ", ".join(config["modules_to_save"])
        return config, f"it trains whole modules ({saved}), which vLLM's LoRA loader refuses"
    return config, None


def vllm_command(spec, port: int, merged: Path | None = None) -> list[str]:
    """The `vllm serve` argv for a run (served on 127.0.0.1:`port`, as `spec.name`)."""
    kind, path = spec.weights or (None, None)
    merge_hint = (f"merge it first (text2sql merge --adapter {spec.run_dir} --out MERGED) and serve that: "
                  f"text2sql serve --run {spec.run_dir} --backend vllm --merged MERGED")
    if merged is not None:
        if not (Path(merged) / "config.json").is_file():
            raise UserError(f"--merged {merged}: not a Hugging Face model dir (no config.json); write one with "
                            f"text2sql merge --adapter {spec.run_dir} --out {merged}")
        cmd = ["vllm", "serve", str(Path(merged).resolve()), "--served-model-name", spec.name]
    elif kind == "model":
        cmd = ["vllm", "serve", str(path), "--served-model-name", spec.name]
    elif kind == "adapter":
        config, problem = _lora_problem(path)
        if problem:
            raise UserError(f"vLLM cannot load {path} as a LoRA module: {problem}; {merge_hint}")
        rank = max([int(config.get("r", 8)), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
        max_rank = next((r for r in LORA_RANKS if r >= rank), rank)
        cmd = ["vllm", "serve", spec.base_model_path(), "--enable-lora", "--lora-modules", f"{spec.name}={path}",
               "--max-lora-rank", str(max_rank)]
    elif kind == "checkpoint":
        raise UserError(f"vLLM loads Hugging Face dirs, not the Lightning checkpoint {path}; {merge_hint}")
    else:
        raise UserError(f"{spec.run_dir} holds no weights vLLM can load")
    dtype = str(spec.model_cfg.get("dtype") or "auto")
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--dtype", dtype if dtype in DTYPES else "auto",
            "--generation-config", "vllm"]  # our requests set every sampling field; the checkpoint's defaults don't
    template = chat_template(spec.data_cfg.template, spec.data_cfg.system_prompt)
    if template is not None:
        cmd += ["--chat-template", template]
    return cmd


class UpstreamGenerator:
    """Generation by an OpenAI-compatible server (vLLM, or another `text2sql serve`): a batch of prompt ids is one
    /v1/completions request, decoded greedily; the continuations are cut to SQL as the local backend cuts them."""

    backend = "vllm"

    def __init__(self, url: str, model: str, api_key: str | None, vocab_size: int, timeout: float = 600.0) -> None:
        import httpx

        self.url, self.model, self.vocab_size = url.rstrip("/"), model, vocab_size
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(headers=headers, timeout=timeout, trust_env=False)

    def generate(self, sources: list[list[int]], max_new_tokens: int, strategy: str | None, db_files: list[str]):
        from text2sql.eval.decoding import Prediction
        from text2sql.eval.generate import extract_sql

        if strategy not in (None, "greedy"):
            raise UserError(f"decoding {strategy}: the vLLM backend decodes greedily (use the local backend for "
                            "other strategies)")
        body = {"model": self.model, "prompt": sources, "max_tokens": max_new_tokens, "temperature": 0, "n": 1}
        reply = self.client.post(f"{self.url}/v1/completions", json=body)
        if reply.status_code != 200:
            raise RuntimeError(f"upstream {self.url} answered {reply.status_code}: {reply.text[:200]}")
        choices = sorted(reply.json()["choices"], key=lambda c: c["index"])
        return [Prediction(extract_sql(c["text"]), "greedy") for c in choices]

    def close(self) -> None:
        self.client.close()


def start_vllm(cmd: list[str], port: int, key: str, wait_s: float = 1800.0) -> subprocess.Popen:
    """Start `cmd` (vLLM's server, its key in VLLM_API_KEY) and wait until its /health answers."""
    import os

    import httpx

    if shutil.which(cmd[0]) is None:
        raise UserError("--backend vllm needs vLLM (pip install vllm, on a CUDA machine); --print-command shows the "
                        "command it would run, --upstream URL uses a vLLM started elsewhere")
    proc = subprocess.Popen(cmd, env={**os.environ, "VLLM_API_KEY": key})
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"vllm serve exited with status {proc.returncode} before it was ready (its log is above)")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.terminate()
    raise UserError(f"vllm serve was not ready after {wait_s:.0f} s")


def stop_vllm(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        print("text2sql serve: vllm serve did not stop within 60 s: killed", file=sys.stderr)
