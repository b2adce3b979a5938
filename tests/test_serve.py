"""`text2sql serve`: the shared smoke run behind the HTTP API, as a client sees it (the real `openai` client, httpx),
on a Spider database; batching, refusals, the vLLM command and SIGTERM. All traffic stays on 127.0.0.1; one server
process serves the module (started once), requests are bounded in count and time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from text2sql.cli import main

KEY = "test-key-0123456789"
QUESTIONS = ["How many singers do we have?", "What are the names of all stadiums?",
             "Show the name and country of every singer.", "Which concert has the most singers?",
             "What is the average age of singers from France?", "List all concert names in 2014.",
             "How many concerts were held in each stadium?", "What is the capacity of the largest stadium?"]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("TEXT2SQL_API_KEY", None)
    return env


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def start_server(args: list[str], log: Path) -> Server:
    """`text2sql serve ... --port 0` in a subprocess; its URL read from the `serving on` line (60 s at most)."""
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "text2sql", "serve", "--port", "0", *args], env=_env(),
                            stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"serving on (http://127\.0\.0\.1:\d+)", log.read_text())
        if found:
            return Server(proc, found.group(1), log)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {log.read_text()[-2000:]}")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(smoke_run, spider_dir: Path, tmp_path_factory):
    """The smoke run served with Spider's databases and an API key; requests wait up to 200 ms for batch-mates (so
    that the SIGTERM test finds requests in flight)."""
    run_dir, _ = smoke_run
    log = tmp_path_factory.mktemp("serve") / "server.log"
    srv = start_server(["--run", str(run_dir), "--db-dir", str(spider_dir / "database"), "--api-key", KEY,
                        "--batch-wait-ms", "200", "--max-tokens", "64"], log)
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(timeout=30)


def client(url: str, key: str = KEY):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def post(url: str, path: str, body, key: str = KEY, raw: bool = False):
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    if raw:
        return httpx.post(url + path, content=body, headers={**headers, "content-type": "application/json"},
                          timeout=60, trust_env=False)
    return httpx.post(url + path, json=body, headers=headers, timeout=60, trust_env=False)


def health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", timeout=10, trust_env=False).json()


@pytest.mark.slow
def test_openai_client_and_sql_on_a_spider_database(server: Server, smoke_run, spider_dir: Path) -> None:
    db = spider_dir / "database" / "concert_singer" / "concert_singer.sqlite"
    before = sha(db)
    api = client(server.url)
    name = smoke_run[0].resolve().name
    assert [m.id for m in api.models.list()] == [name]
    chat = api.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                       extra_body={"db_id": "concert_singer"})
    sql = chat.choices[0].message.content
    assert chat.model == name and sql and chat.usage.prompt_tokens > 50
    streamed = api.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTIONS[0]}],
                                           extra_body={"db_id": "concert_singer"}, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == sql
    done = api.completions.create(model=name, prompt=QUESTIONS[0], extra_body={"db_id": "concert_singer"})
    assert done.choices[0].text == sql  # one prompt, one path, whichever route asks
    answer = post(server.url, "/v1/sql", {"question": QUESTIONS[0], "db_id": "concert_singer"}).json()
    assert answer["sql"] == sql and answer["status"] and answer["timings"]["generation_s"] > 0
    assert answer["decoding"] == "greedy" and answer["batch_size"] >= 1
    rows = post(server.url, "/v1/sql", {"sql": "SELECT name, age FROM singer ORDER BY age", "db_id": "concert_singer",
                                        "max_rows": 2}).json()
    assert rows["status"] == "ok" and rows["columns"] == ["Name", "Age"] and len(rows["rows"]) == 2
    assert rows["row_count"] == 6 and rows["truncated"] is True
    schema = "CREATE TABLE pet (id INTEGER PRIMARY KEY, name TEXT, age INT);"
    by_text = post(server.url, "/v1/sql", {"question": "How many pets?", "schema": schema}).json()
    assert by_text["status"] == "not_executed" and by_text["db_id"] is None
    system = api.chat.completions.create(model=name, messages=[{"role": "system", "content": schema},
                                                               {"role": "user", "content": "How many pets?"}])
    assert system.choices[0].message.content == by_text["sql"]  # the system message is the schema
    earlier = [{"role": "user", "content": QUESTIONS[2]}, {"role": "assistant", "content": "SELECT name FROM singer"}]
    turn = api.chat.completions.create(model=name, messages=[*earlier, {"role": "user", "content": QUESTIONS[3]}],
                                       extra_body={"db_id": "concert_singer"}).choices[0].message.content
    followed = post(server.url, "/v1/sql", {"question": QUESTIONS[3], "db_id": "concert_singer", "history": [
        {"question": QUESTIONS[2], "sql": "SELECT name FROM singer"}]}).json()
    assert followed["sql"] == turn  # earlier chat turns are the history, as /v1/sql's
    guided = post(server.url, "/v1/sql", {"question": QUESTIONS[1], "db_id": "concert_singer",
                                          "decoding": "execution_guided"}).json()
    assert guided["decoding"] == "execution_guided" and guided["candidates"] >= 1 and guided["status"]
    import httpx

    listed = httpx.get(f"{server.url}/v1/databases", headers={"Authorization": f"Bearer {KEY}"}, trust_env=False)
    assert "concert_singer" in [d["id"] for d in listed.json()["data"]]
    assert sha(db) == before


@pytest.mark.slow
def test_docs_examples_run_against_the_server(server: Server) -> None:
    """docs/serve.md's curl and openai examples, as written, against the module's server (its URL for the
    documented one, its key in TEXT2SQL_API_KEY as the docs say)."""
    import shutil

    doc = (REPO_ROOT / "docs" / "serve.md").read_text(encoding="utf-8")
    env = {**_env(), "TEXT2SQL_API_KEY": KEY}
    curl = next(line for line in doc.splitlines() if line.startswith("curl "))
    expected = post(server.url, "/v1/sql", {"question": QUESTIONS[0], "db_id": "concert_singer"}).json()["sql"]
    if shutil.which("curl"):
        proc = subprocess.run(["bash", "-c", curl.replace("http://127.0.0.1:8000", server.url)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and json.loads(proc.stdout)["sql"] == expected, proc.stdout + proc.stderr
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1).replace("http://127.0.0.1:8000", server.url)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == expected, proc.stderr[-2000:]


@pytest.mark.slow
def test_concurrent_requests_are_batched_with_the_same_sql(server: Server) -> None:
    alone = {q: post(server.url, "/v1/sql", {"question": q, "db_id": "concert_singer"}).json()["sql"]
             for q in QUESTIONS}
    first = health(server.url)
    asked = QUESTIONS * 4
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda q: post(server.url, "/v1/sql", {"question": q, "db_id": "concert_singer"}),
                                asked))
    after = health(server.url)
    assert [a.status_code for a in answers] == [200] * 32
    assert [a.json()["sql"] for a in answers] == [alone[q] for q in asked]  # greedy: batched = one at a time
    assert after["generated_requests"] - first["generated_requests"] == 32
    calls = after["generate_calls"] - first["generate_calls"]
    assert 1 <= calls < 32 and max(a.json()["batch_size"] for a in answers) > 1, (calls, after)


@pytest.mark.slow
def test_bad_requests_wrong_key_and_writes_are_refused(server: Server, smoke_run, spider_dir: Path) -> None:
    import openai

    db = spider_dir / "database" / "concert_singer" / "concert_singer.sqlite"
    before = sha(db)
    name = smoke_run[0].resolve().name
    for body, status, says in [
        ('{"question": "How many', 400, "not valid JSON"),
        (json.dumps({"question": "How many singers?"}), 400, "db_id"),
        (json.dumps({"question": "x", "db_id": "concert_singer", "sqll": "SELECT 1"}), 400, "unknown field: sqll"),
        (json.dumps({"question": "x" * 5000, "db_id": "concert_singer"}), 400, "above the limit"),
        (json.dumps({"question": "x", "db_id": "../../etc"}), 404, "unknown db_id"),
        (json.dumps({"question": "x", "db_id": "concert_singer", "decoding": "magic"}), 400, "greedy"),
        (json.dumps({"question": "x", "db_id": "concert_singer", "max_rows": 5000}), 400, "cap of 1000"),
        (json.dumps({"question": "x", "schema": "CREATE TABLE t (a INT)", "decoding": "execution_guided"}), 400,
         "give a db_id"),
    ]:
        reply = post(server.url, "/v1/sql", body, raw=True)
        message = reply.json()["error"]["message"]
        assert reply.status_code == status and says in message and "\n" not in message, (body, message)
    with pytest.raises(openai.AuthenticationError):
        client(server.url, key="wrong-key-000").models.list()
    with pytest.raises(openai.NotFoundError, match="not found"):
        client(server.url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                                   extra_body={"db_id": "concert_singer"})
    with pytest.raises(openai.BadRequestError, match="cap of 64"):
        client(server.url).completions.create(model=name, prompt="How many?", max_tokens=1000,
                                              extra_body={"db_id": "concert_singer"})
    for sql in ("DROP TABLE singer", "DELETE FROM singer", "SELECT 1; DROP TABLE singer",
                "INSERT INTO singer (Singer_ID) VALUES (99)"):
        reply = post(server.url, "/v1/sql", {"sql": sql, "db_id": "concert_singer"})
        assert reply.status_code == 200 and reply.json()["status"] in ("write_refused", "syntax_error"), reply.text
    assert post(server.url, "/v1/sql", {"sql": "DROP TABLE singer", "db_id": "concert_singer"}
                ).json()["status"] == "write_refused"
    assert sha(db) == before
    assert health(server.url)["status"] == "ok"  # still serving


@pytest.mark.slow
def test_a_front_for_vllm_answers_through_an_upstream_server(server: Server, smoke_run, spider_dir: Path,
                                                             tmp_path: Path) -> None:
    """--backend vllm's front (prompts built here, token ids sent to an OpenAI completions server, SQL executed
    here), pointed at the module's server standing in for vLLM: the same SQL as the local backend."""
    front = start_server(["--run", str(smoke_run[0]), "--backend", "vllm", "--upstream", server.url, "--api-key", KEY,
                          "--db-dir", str(spider_dir / "database")], tmp_path / "front.log")
    try:
        for question in QUESTIONS[:3]:
            body = {"question": question, "db_id": "concert_singer"}
            local, fronted = post(server.url, "/v1/sql", body).json(), post(front.url, "/v1/sql", body).json()
            assert fronted["sql"] == local["sql"] and fronted["status"] == local["status"], (local, fronted)
        assert health(front.url)["backend"] == "vllm"
    finally:
        assert front.stop() == 0


@pytest.mark.slow
def test_sigterm_drains_requests_in_flight_and_exits_0(server: Server) -> None:
    with ThreadPoolExecutor(8) as pool:
        pending = [pool.submit(post, server.url, "/v1/sql", {"question": q, "db_id": "concert_singer"})
                   for q in QUESTIONS]
        deadline = time.monotonic() + 30
        while health(server.url)["in_flight"] < 1 + len(QUESTIONS) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        replies = [p.result(timeout=60) for p in pending]
    assert [r.status_code for r in replies] == [200] * len(QUESTIONS)
    assert server.proc.wait(timeout=60) == 0
    log = server.log.read_text()
    assert "stopped after" in log and "Traceback" not in log
    assert re.search(r"POST /v1/sql 200 [\d.]+ s batch \d+", log)  # one line per request


def test_unsafe_or_impossible_settings_are_one_line_before_loading(tmp_path: Path, capsys) -> None:
    for argv, says in [
        (["--host", "0.0.0.0"], "--api-key"),
        (["--api-key", "short"], "8 characters"),
        (["--port", "70000"], "not a port"),
        (["--merged", str(tmp_path)], "--backend vllm"),
    ]:
        assert main(["serve", "--run", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1, err


def test_vllm_command_is_rehearsed_for_the_run(smoke_run, tmp_path: Path, capsys) -> None:
    """The exact `vllm serve` argv, built on CPU (vLLM is not run): the smoke adapter (it trains embed_tokens and
    lm_head) is refused with the merge path; a plain LoRA adapter becomes a LoRA module named as the run is served;
    a merged dir is served as it is; the run's template travels as a chat template that renders the run's prompt."""
    import shlex
    import shutil

    from text2sql.serve.engine import RunSpec
    from text2sql.serve.vllm import vllm_command

    run_dir = smoke_run[0]
    assert main(["serve", "--run", str(run_dir), "--backend", "vllm", "--print-command"]) == 2
    err = capsys.readouterr().err
    assert "modules_to_save" not in err and "embed_tokens" in err and "text2sql merge --adapter" in err
    assert main(["serve", "--run", str(run_dir), "--best", "--backend", "vllm", "--print-command"]) == 2
    err = capsys.readouterr().err  # --best: the best epoch's exported adapter (predict's rule), the same refusal
    assert str(run_dir / "adapter_best") in err and "embed_tokens" in err and "text2sql merge --adapter" in err
    spec = RunSpec(run_dir)
    adapter = tmp_path / "adapter"
    shutil.copytree(run_dir / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "modules_to_save": None}))
    spec.weights = ("adapter", adapter)
    cmd = vllm_command(spec, 8001)
    assert cmd[:2] == ["vllm", "serve"] and (Path(cmd[2]) / "config.json").is_file()  # the run's base model
    assert cmd[cmd.index("--lora-modules") + 1] == f"{spec.name}={adapter}" and "--enable-lora" in cmd
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"  # r=4: the smallest rank vLLM takes above it
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8001"
    assert "--api-key" not in cmd  # the inner key goes in VLLM_API_KEY, never on a command line
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    assert main(["serve", "--run", str(run_dir), "--backend", "vllm", "--merged", str(merged), "--print-command",
                 "--port", "9000"]) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed[:3] == ["vllm", "serve", str(merged.resolve())]
    assert printed[printed.index("--served-model-name") + 1] == spec.name and printed[printed.index("--port") + 1] == "9001"
    _chat_template_renders_the_prompt(spec, printed[printed.index("--chat-template") + 1])


def _chat_template_renders_the_prompt(spec, vanilla: str) -> None:
    """The same text as the run's template writes (special tokens as text); the same ids for a one-turn prompt (an
    earlier answer is tokenized apart from its turn in training, vLLM tokenizes the whole chat: its first word
    may split differently, which is why our front sends token ids)."""
    from text2sql.data.prompt import encode_source, get_template
    from text2sql.serve.vllm import chat_template

    tokenizer = spec.load_tokenizer()
    record = {"instruction": "Tables: singer(name, age).", "input": "###Input:\nHow many?\n\n###Response:",
              "history": [["###Input:\nList names.\n\n###Response:", "SELECT name FROM singer"]]}
    question = {"role": "user", "content": f"{record['instruction']}\n{record['input']}"}
    messages = [{"role": "user", "content": record["history"][0][0]},
                {"role": "assistant", "content": record["history"][0][1]}, question]
    for name, template in (("vanilla", vanilla), ("llama2", chat_template("llama2", None))):
        pieces = get_template(name).pieces(tokenizer, record, record["instruction"], None)
        expected = "".join(p if isinstance(p, str) else tokenizer.convert_ids_to_tokens(p) for p in pieces)
        assert tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True) == expected, name
        text = tokenizer.apply_chat_template([question], chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
        single = {**record, "history": []}
        assert list(tokenizer(text, add_special_tokens=False)["input_ids"]) == encode_source(
            single, tokenizer, name, 4096)[0], (name, text)
