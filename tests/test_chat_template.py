"""`template=chat` through the tokenizer's own chat template, and history as earlier turns, for the stand-ins of
the new presets (`tiny_qwen`: ChatML, `tiny_llama3`: Llama 3) and for CodeLlama's `llama2` as DB-GPT-Hub renders it."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from conftest import REPO_ROOT
from text2sql.data.datasets import corpus
from text2sql.data.prompt import IGNORE_INDEX, LLAMA2_SYSTEM, encode_record, encode_source
from text2sql.model.load import load_model, load_tokenizer, resolve_model_path

CONF = REPO_ROOT / "conf"
HISTORY = [["How many singers are there?", "SELECT count(*) FROM singer"],
           ["And how many concerts?", "SELECT count(*) FROM concert"]]


def build(model: str, cache):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"model={model}", f"paths.cache_dir={cache}", "logger=none",
                                                      "dataset.n_train=60", "dataset.n_dev=8"])
    dataset = instantiate(cfg.dataset)
    path = resolve_model_path(cfg.model, corpus=lambda: corpus(dataset, "train"))
    return cfg, dataset, path, load_tokenizer(cfg.model, path)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return build("tiny_qwen", tmp_path_factory.mktemp("qwen"))


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tiny_qwen_is_qwen_shaped(qwen):
    cfg, _, path, tok = qwen
    assert cfg.data.template == "chat" and cfg.dataset.name == "sample"
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert tok.pad_token_id != tok.eos_token_id and "<|im_start|>" in tok.get_vocab() and tok.chat_template
    model = load_model(cfg.model, path, tok)
    attn = model.model.layers[0].self_attn
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None  # Qwen2: biases on q/k/v only
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)


def test_chat_labels_start_at_the_answer_and_end_with_the_end_of_turn(qwen):
    _, dataset, _, tok = qwen
    record = dataset.records("train")[0]
    ex = encode_record(record, tok, "chat", 2048, 512)
    source = tok.decode(ex.input_ids[: ex.source_len])
    assert source.startswith("<|im_start|>system\n") and source.endswith("###Response:<|im_end|>\n<|im_start|>assistant\n")
    assert ex.labels[: ex.source_len] == [IGNORE_INDEX] * ex.source_len
    assert ex.labels[ex.source_len:] == ids(tok, record["output"]) + [tok.eos_token_id]  # first label = first answer token
    assert ex.input_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>") != tok.pad_token_id
    # the prompt of generation is the prompt of training, and it is what apply_chat_template gives
    assert encode_source(record, tok, "chat", 2048)[0] == ex.input_ids[: ex.source_len]
    messages = [{"role": "user", "content": f"{record['instruction']}\n{record['input']}"}]
    assert ex.input_ids[: ex.source_len] == ids(tok, tok.apply_chat_template(messages, tokenize=False,
                                                                             add_generation_prompt=True))


def test_chat_history_renders_as_earlier_turns_and_only_the_last_answer_is_learned(qwen):
    _, dataset, _, tok = qwen
    record = {**dataset.records("train")[0], "history": HISTORY}
    ex = encode_record(record, tok, "chat", 2048, 512, system_prompt="You write SQLite.")
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\nYou write SQLite.<|im_end|>\n"
                           "<|im_start|>user\nHow many singers are there?<|im_end|>\n"
                           "<|im_start|>assistant\nSELECT count(*) FROM singer<|im_end|>\n"
                           "<|im_start|>user\nAnd how many concerts?<|im_end|>\n"
                           "<|im_start|>assistant\nSELECT count(*) FROM concert<|im_end|>\n<|im_start|>user\nI want you")
    assert [t for t in ex.labels if t != IGNORE_INDEX] == ids(tok, record["output"]) + [tok.eos_token_id]


def test_chat_truncation_cuts_the_schema_never_the_question(qwen):
    _, dataset, _, tok = qwen
    record = dataset.records("train")[0]
    full = encode_record(record, tok, "chat", 2048, 512)
    cut = encode_record(record, tok, "chat", full.source_len - 20, 512)
    assert cut.source_len <= full.source_len - 20 and cut.truncation and "hard" not in cut.truncation
    question = record["input"].split("\n")[1]
    assert question in tok.decode(cut.input_ids[: cut.source_len])
    assert tok.decode(cut.input_ids[: cut.source_len]).endswith("<|im_start|>assistant\n")
    assert cut.labels[cut.source_len:] == full.labels[full.source_len:]


def test_tiny_llama3_writes_bos_once_and_pads_with_eos(tmp_path):
    _, dataset, _, tok = build("tiny_llama3", tmp_path)
    record = dataset.records("train")[0]
    ex = encode_record(record, tok, "chat", 2048, 512)
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids.count(tok.bos_token_id) == 1  # the template's bos
    assert tok.decode(ex.input_ids[: ex.source_len]).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert ex.labels[ex.source_len:] == ids(tok, record["output"]) + [tok.convert_tokens_to_ids("<|eot_id|>")]
    assert tok.pad_token == tok.eos_token == "<|eot_id|>"  # Llama 3 has no pad and no unk: eos pads


def test_llama2_is_dbgpt_hubs_with_and_without_history(tmp_path):
    _, dataset, _, tok = build("tiny_codellama", tmp_path)
    record = dataset.records("train")[0]
    prompt = f"{record['instruction']}\n{record['input']}"
    ex = encode_record(record, tok, "llama2", 2048, 512)
    # today's rendering, byte for byte: <s> [INST] <<SYS>> system <</SYS>> prompt [/INST]
    want = [tok.bos_token_id] + ids(tok, f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{prompt} [/INST] ")
    assert ex.input_ids[: ex.source_len] == want
    assert ex.labels[ex.source_len:] == ids(tok, record["output"]) + [tok.eos_token_id]
    # DB-GPT-Hub's Llama2Template: turn 0 = bos + [INST] sys + query [/INST] | resp + eos; turn t = bos + [INST] query
    hist = encode_record({**record, "history": HISTORY}, tok, "llama2", 2048, 512)
    bos, eos = [tok.bos_token_id], [tok.eos_token_id]
    want = (bos + ids(tok, f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{HISTORY[0][0]} [/INST] ")
            + ids(tok, HISTORY[0][1]) + eos + bos + ids(tok, f"[INST] {HISTORY[1][0]} [/INST] ")
            + ids(tok, HISTORY[1][1]) + eos + bos + ids(tok, f"[INST] {prompt} [/INST] "))
    assert hist.input_ids[: hist.source_len] == want
    assert hist.labels[hist.source_len:] == ids(tok, record["output"]) + eos  # the mask starts at the answer


def test_a_tokenizer_without_a_chat_template_is_one_line(tmp_path):
    from text2sql.errors import ConfigError

    _, dataset, _, tok = build("tiny_codellama", tmp_path)
    with pytest.raises(ConfigError, match="template=chat needs a tokenizer with a chat template"):
        encode_record(dataset.records("train")[0], tok, "chat", 2048, 512)
