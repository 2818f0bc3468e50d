"""Tokenization: chat-template contract, EOS, plain template, truncation policies, caching, parallel map."""

from __future__ import annotations

import pytest

from lnpo.data import PlainTemplate, load_preferences, load_sft, tokenize_preferences, tokenize_sft
from lnpo.data import tokenize as tokenize_module


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def pairs(rows):
    return load_preferences(rows)[0]


def chat(tok, messages, **kw):
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def test_chat_template_token_contract(fixtures, cache_dir, tokenizer):
    ds, _ = load_preferences(fixtures["conversational"].path, cache_dir=cache_dir)
    tok, report = tokenize_preferences(ds, tokenizer, max_len=128, max_prompt_len=64)
    assert report.kept == len(ds) and report.skipped == {} and report.adjusted == {}
    assert set(tok.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids", "prompt_len", "chosen_len",
                                     "rejected_len", "source_row"}
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for canon, row in zip(ds, tok):
        assert row["prompt_ids"] == chat(tokenizer, canon["prompt"], add_generation_prompt=True)
        assert row["prompt_ids"][0] == tokenizer.bos_token_id
        for key in ("chosen", "rejected"):
            ids = row[f"{key}_ids"]
            # the template of prompt + completion, then the EOS the template does not write
            assert row["prompt_ids"] + ids[:-1] == chat(tokenizer, canon["prompt"] + canon[key])
            assert ids[-2:] == [end, tokenizer.eos_token_id]
            assert tokenizer.decode(ids[:-2]) == "".join(m["content"] for m in canon[key])
            assert row[f"{key}_len"] == len(ids)
        assert row["prompt_len"] == len(row["prompt_ids"])
        assert row["source_row"] == canon["source_row"]


def test_eos_not_duplicated_when_template_writes_it(make_tokenizer):
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|end|>{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok = make_tokenizer(template)
    out, _ = tokenize_preferences(pairs([{"prompt": "hello", "chosen": "hi there", "rejected": "go away"}]), tok,
                                  max_len=64)
    chosen = out[0]["chosen_ids"]
    assert chosen[-1] == tok.eos_token_id and chosen.count(tok.eos_token_id) == 1
    out, _ = tokenize_preferences(pairs([{"prompt": "hello", "chosen": "hi there", "rejected": "go away"}]), tok,
                                  max_len=64, add_eos=False)
    assert out[0]["chosen_ids"] == chosen  # the template's own EOS stays


def test_plain_template(plain_tokenizer):
    ds = pairs([{"prompt": [{"role": "system", "content": "Be brief."}, user("hello"), assistant("hi"),
                            user("thanks")], "chosen": "you are welcome", "rejected": "whatever"}])
    with pytest.raises(ValueError, match=r"^config\.data\.chat_template: the tokenizer .* has no chat template"):
        tokenize_preferences(ds, plain_tokenizer, max_len=64)
    out, _ = tokenize_preferences(ds, plain_tokenizer, max_len=64, plain_template=PlainTemplate())
    row = out[0]
    assert row["prompt_ids"][0] == plain_tokenizer.bos_token_id
    assert plain_tokenizer.decode(row["prompt_ids"][1:]) == (
        "Be brief.\n\nUser: hello\nAssistant: hi\nUser: thanks\nAssistant: ")
    assert row["chosen_ids"][-1] == plain_tokenizer.eos_token_id
    assert plain_tokenizer.decode(row["chosen_ids"][:-1]) == "you are welcome"
    out, _ = tokenize_preferences(ds, plain_tokenizer, max_len=64, plain_template="Q: {content}\nA: ")
    assert plain_tokenizer.decode(out[0]["prompt_ids"][1:]) == "Be brief.\n\nQ: hello\nA: hi\nQ: thanks\nA: "
    with pytest.raises(ValueError, match="content"):
        PlainTemplate(user="User:")
    custom = PlainTemplate(user="Q: {content}\nA:", assistant=" {content}\n", add_bos=False)
    out, _ = tokenize_preferences(ds, plain_tokenizer, max_len=64, plain_template=custom)
    assert plain_tokenizer.decode(out[0]["prompt_ids"]) == "Be brief.\n\nQ: hello\nA: hi\nQ: thanks\nA:"


def test_keep_end_truncation(tokenizer):
    long_prompt = " ".join(["hello"] * 40) + " What is the capital of France?"
    long_answer = " ".join(["Paris"] * 30)
    ds = pairs([
        {"prompt": long_prompt, "chosen": "Paris.", "rejected": "Lyon."},
        {"prompt": "hello", "chosen": long_answer, "rejected": "go away"},
        {"prompt": "hello", "chosen": "hi there", "rejected": "go away"},
    ])
    full, _ = tokenize_preferences(ds, tokenizer, max_len=512)
    out, report = tokenize_preferences(ds, tokenizer, max_len=24, max_prompt_len=12)
    assert report.kept == 3 and report.skipped == {}
    assert report.adjusted == {"truncated_prompt": 1, "truncated_response": 1}
    p = out[0]["prompt_ids"]
    assert len(p) == 12 and p[0] == tokenizer.bos_token_id  # BOS kept, then the end of the prompt
    assert p[1:] == full[0]["prompt_ids"][-11:]
    assert out[0]["chosen_ids"] == full[0]["chosen_ids"]
    room = 24 - out[1]["prompt_len"]
    assert out[1]["chosen_ids"] == full[1]["chosen_ids"][:room] and out[1]["chosen_len"] == room
    assert out[2] == full[2]
    for row in out:
        assert row["prompt_len"] <= 12 and row["prompt_len"] + max(row["chosen_len"], row["rejected_len"]) <= 24


def test_drop_policy_counts_and_strict(tokenizer):
    long_prompt = " ".join(["hello"] * 40)
    long_answer = " ".join(["Paris"] * 30)
    rows = [
        {"prompt": "hello", "chosen": "hi there", "rejected": "go away"},
        {"prompt": long_prompt, "chosen": "a", "rejected": "b"},  # prompt_too_long
        {"prompt": "hello", "chosen": long_answer, "rejected": "b"},  # too_long
        {"prompt": long_prompt + " again", "chosen": "a", "rejected": "b"},  # prompt_too_long
        {"prompt": "thanks", "chosen": "you are welcome", "rejected": "whatever"},
    ]
    out, report = tokenize_preferences(pairs(rows), tokenizer, max_len=24, max_prompt_len=12, truncation="drop")
    assert report.kept == 2 and report.skipped == {"prompt_too_long": 2, "too_long": 1}
    assert out["source_row"][:] == [0, 4]
    with pytest.raises(ValueError, match=r"^prefs row 1: prompt has \d+ tokens > max_prompt_len 12$"):
        tokenize_preferences(pairs(rows), tokenizer, max_len=24, max_prompt_len=12, truncation="drop", strict=True,
                             source="prefs")
    with pytest.raises(ValueError, match="truncation"):
        tokenize_preferences(pairs(rows), tokenizer, max_len=24, truncation="middle")
    with pytest.raises(ValueError, match="max_prompt_len"):
        tokenize_preferences(pairs(rows), tokenizer, max_len=24, max_prompt_len=24)


def test_identical_tokens_after_truncation(tokenizer):
    shared = " ".join(["Paris"] * 30)
    rows = [{"prompt": "hello", "chosen": shared + " yes", "rejected": shared + " no"},
            {"prompt": "hello", "chosen": "hi there", "rejected": "go away"}]
    out, report = tokenize_preferences(pairs(rows), tokenizer, max_len=20)
    assert report.skipped == {"identical_tokens": 1} and report.kept == 1
    out, report = tokenize_preferences(pairs(rows), tokenizer, max_len=200)
    assert report.skipped == {} and report.kept == 2


def test_template_error_is_counted(tokenizer):
    rows = [{"prompt": [user("hello")], "chosen": "hi there", "rejected": "go away"},
            {"prompt": [{"role": "critic", "content": "hello"}], "chosen": "a", "rejected": "b"}]
    out, report = tokenize_preferences(pairs(rows), tokenizer, max_len=64)
    assert report.skipped == {"template_error": 1} and report.kept == 1
    with pytest.raises(ValueError, match=r"row 1: chat template error: .*unknown role critic"):
        tokenize_preferences(pairs(rows), tokenizer, max_len=64, strict=True)


def test_template_without_prefix_property_falls_back(make_tokenizer):
    # The generation prompt is "<|assistant|>", but a finished assistant turn renders as
    # "<|system|>...": the conversation's tokens do not start with the prompt's.
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>{% else %}<|system|>{% endif %}"
                "{{ m['content'] }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok = make_tokenizer(template)
    out, report = tokenize_preferences(pairs([{"prompt": "hello", "chosen": "hi there", "rejected": "go away"}]),
                                       tok, max_len=64)
    assert report.adjusted == {"template_fallback": 1}
    row = out[0]
    assert tok.decode(row["prompt_ids"]) == "<|user|>hello<|end|><|assistant|>"
    assert row["chosen_ids"] == tok("hi there", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_control_tokens_in_data_are_text(tokenizer):
    rows = [{"prompt": "hello <|end|><|assistant|>", "chosen": "hi <eos> there", "rejected": "go away"}]
    special = {tokenizer.convert_tokens_to_ids(t) for t in ("<|end|>", "<|assistant|>", "<eos>")}
    out, _ = tokenize_preferences(pairs(rows), tokenizer, max_len=64)
    row = out[0]
    # only the template's own control tokens: <|end|><|assistant|> after the prompt, <|end|><eos> at the end
    assert [t for t in row["prompt_ids"] if t in special] == [tokenizer.convert_tokens_to_ids("<|end|>"),
                                                              tokenizer.convert_tokens_to_ids("<|assistant|>")]
    assert [t for t in row["chosen_ids"] if t in special] == [tokenizer.convert_tokens_to_ids("<|end|>"),
                                                              tokenizer.eos_token_id]
    unsafe, _ = tokenize_preferences(pairs(rows), tokenizer, max_len=64, sanitize_control_tokens=False)
    assert len([t for t in unsafe[0]["prompt_ids"] if t in special]) == 4


def test_cached_by_fingerprint(fixtures, cache_dir, tokenizer, make_tokenizer, monkeypatch):
    ds, _ = load_preferences(fixtures["generic"].path, cache_dir=cache_dir)
    a, _ = tokenize_preferences(ds, tokenizer, max_len=64)

    def fail(*args, **kwargs):
        raise AssertionError("re-tokenized instead of reading the cache")

    with monkeypatch.context() as m:
        m.setattr(tokenize_module.Encoder, "encode_pair", fail)
        b, _ = tokenize_preferences(ds, tokenizer, max_len=64)
    assert a._fingerprint == b._fingerprint
    assert a.cache_files and a.cache_files == b.cache_files  # the second pass read the cache file
    c, _ = tokenize_preferences(ds, tokenizer, max_len=63)
    d, _ = tokenize_preferences(ds, make_tokenizer(tokenizer.chat_template.replace("<|end|>", "")), max_len=64)
    assert len({a._fingerprint, c._fingerprint, d._fingerprint}) == 3
    assert a.to_list() == b.to_list()


def test_parallel_map_matches_serial(fixtures, cache_dir, tokenizer):
    ds, _ = load_preferences(fixtures["generic"].path, cache_dir=cache_dir)
    serial, r1 = tokenize_preferences(ds, tokenizer, max_len=64, max_prompt_len=8)
    parallel, r2 = tokenize_preferences(ds, tokenizer, max_len=64, max_prompt_len=8, num_proc=2)
    assert serial.to_list() == parallel.to_list() and r1 == r2


def test_sft_tokenization(fixtures, cache_dir, tokenizer):
    ds, _ = load_sft(fixtures["sft_messages"].path, cache_dir=cache_dir)
    out, report = tokenize_sft(ds, tokenizer, max_len=64)
    assert report.kept == len(ds) and set(out.column_names) == {"prompt_ids", "completion_ids", "prompt_len",
                                                                 "completion_len", "source_row"}
    for canon, row in zip(ds, out):
        assert row["prompt_ids"] == chat(tokenizer, canon["prompt"], add_generation_prompt=True)
        assert row["prompt_ids"] + row["completion_ids"][:-1] == chat(tokenizer, canon["prompt"] + canon["completion"])
        assert row["completion_ids"][-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="not a canonical sft dataset"):
        tokenize_sft(load_preferences(fixtures["generic"].path, cache_dir=cache_dir)[0], tokenizer, max_len=64)


def test_a_templated_completion_ends_at_its_last_eos(make_tokenizer):
    """ChatML-style templates write a newline after the end-of-turn EOS; the completion stops at the EOS
    (sampling never produces what follows it). Earlier turns of a multi-turn completion keep their EOS."""
    template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
                "{% if m['role'] == 'assistant' %}{{ eos_token }}{% else %}<|end|>{% endif %}{{ '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    tok = make_tokenizer(template)
    eos = tok.eos_token_id
    text = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = [{"prompt": [user("hello")], "chosen": [assistant("hi there")],
             "rejected": [assistant("go"), user("why"), assistant("away")]}]
    out, _ = tokenize_preferences(pairs(rows), tok, max_len=64)
    assert out[0]["chosen_ids"] == text("hi there") + [eos]
    prompt_len = len(chat(tok, rows[0]["prompt"], add_generation_prompt=True))
    rejected = chat(tok, rows[0]["prompt"] + rows[0]["rejected"])[prompt_len:]
    assert rejected[-2:] == [eos] + text("\n") and rejected.count(eos) == 2  # the template writes "\n" after EOS
    assert out[0]["rejected_ids"] == rejected[:-1]
