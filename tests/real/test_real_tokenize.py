"""SmolLM2-135M-Instruct's tokenizer and ChatML template through lnpo.data, token by token.

The expectation is written here independently of ``apply_chat_template``: the ChatML text the template
renders (SmolLM2's default system prompt when the conversation has none) is spelled out and encoded
with the tokenizer's plain ``__call__`` (``add_special_tokens=False``; ``<|im_start|>``/``<|im_end|>``
are special tokens of the vocabulary, so the text encodes to them).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.real_model

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
LONG = ("The mitochondria is the powerhouse of the cell. It makes the energy the cell uses, in the form of "
        "ATP, by breathing in oxygen and burning sugars. Cells that work hard, such as muscle cells, have many.")
ROWS = [
    {"chosen": [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is Paris."}],
     "rejected": [{"role": "user", "content": "What is the capital of France?"},
                  {"role": "assistant", "content": "France is a country in Europe."}]},
    {"chosen": [{"role": "system", "content": "Answer in one word."},
                {"role": "user", "content": "Is the sky blue?"},
                {"role": "assistant", "content": "Yes."}],
     "rejected": [{"role": "system", "content": "Answer in one word."},
                  {"role": "user", "content": "Is the sky blue?"},
                  {"role": "assistant", "content": "Green."}]},
    {"chosen": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What does a cell's mitochondria do?"},
                {"role": "assistant", "content": LONG}],
     "rejected": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
                  {"role": "user", "content": "What does a cell's mitochondria do?"},
                  {"role": "assistant", "content": "No idea."}]},
]


def chatml(messages, *, generation_prompt: bool) -> str:
    if messages[0]["role"] != "system":
        messages = [{"role": "system", "content": SYSTEM}] + list(messages)
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if generation_prompt else "")


@pytest.fixture(scope="module")
def preference_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefs") / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


def test_conversational_pairs_tokenize_to_the_chatml_tokens(preference_file, tokenizer):
    from lnpo.data import load_preferences, tokenize_preferences

    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    im_start, im_end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    raw, report = load_preferences(preference_file, schema="conversational")
    assert report.kept == 3
    out, tok_report = tokenize_preferences(raw, tokenizer, max_len=512)
    assert tok_report.kept == 3 and tok_report.adjusted == {}
    for row, src in zip(out, ROWS, strict=True):
        prompt = src["chosen"][:-1]
        want_prompt = enc(chatml(prompt, generation_prompt=True))
        assert row["prompt_ids"] == want_prompt
        # the boundary: the prompt ends with the assistant header, "<|im_start|>assistant\n"
        header = [im_start] + enc("assistant\n")
        assert want_prompt[-len(header):] == header
        for key in ("chosen", "rejected"):
            answer = src[key][-1]["content"]
            # the response is the answer and its end-of-turn token <|im_end|>, the model's EOS; the newline the
            # template writes after it is never generated (sampling stops at EOS) and is not a response token
            assert row[f"{key}_ids"] == enc(answer + "<|im_end|>"), key
            assert row[f"{key}_ids"][-1] == im_end == tokenizer.eos_token_id
            assert row["prompt_ids"] + row[f"{key}_ids"] + enc("\n") == enc(chatml(src[key], generation_prompt=False))


def test_truncation_keeps_the_prompts_end_and_the_responses_start(preference_file, tokenizer):
    from lnpo.data import load_preferences, tokenize_preferences

    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    raw, _ = load_preferences(preference_file, schema="conversational")
    max_len, max_prompt_len = 64, 40
    out, report = tokenize_preferences(raw, tokenizer, max_len=max_len, max_prompt_len=max_prompt_len)
    assert report.kept == 3
    rows = list(out)
    full_prompt = enc(chatml(ROWS[2]["chosen"][:-1], generation_prompt=True))
    assert len(full_prompt) > max_prompt_len
    # keep_end: the first token (<|im_start|>, this tokenizer's BOS) and the prompt's last tokens
    assert tokenizer.bos_token_id == full_prompt[0]
    assert rows[2]["prompt_ids"] == [full_prompt[0]] + full_prompt[len(full_prompt) - (max_prompt_len - 1):]
    assert tokenizer.decode(rows[2]["prompt_ids"][-4:]) == "<|im_start|>assistant\n"
    long_answer = enc(LONG + "<|im_end|>")
    room = max_len - max_prompt_len
    assert len(long_answer) > room
    assert rows[2]["chosen_ids"] == long_answer[:room]  # cut at the end: no end-of-turn token
    assert rows[2]["rejected_ids"] == enc("No idea.<|im_end|>")
    assert report.adjusted == {"truncated_prompt": 1, "truncated_response": 1}
    assert rows[0]["prompt_ids"] == enc(chatml(ROWS[0]["chosen"][:-1], generation_prompt=True))  # short: untouched
