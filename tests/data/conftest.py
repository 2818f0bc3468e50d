"""Fixtures for tests/data: a tiny offline tokenizer with a chat template, and fixture files per schema.

Every fixture file is written by the tests themselves (no downloads) and comes
with the counts it must produce: rows kept and rows skipped per reason.
"""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import datasets  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402

datasets.disable_progress_bars()

SPECIAL = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]

# Writes the BOS, one header token per role, the content and <|end|>; the EOS is not
# written (the tokenizer appends it). Unknown roles raise (-> template_error).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>"
    "{% elif m['role'] == 'assistant' %}<|assistant|>"
    "{% elif m['role'] == 'system' %}<|system|>"
    "{% else %}{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
    "{{ m['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

CORPUS = [
    "What is the capital of France? Paris is the capital of France.",
    "Tell me a joke. Why did the chicken cross the road? To get to the other side.",
    "How many legs does a spider have? A spider has eight legs.",
    "Explain gravity briefly. Gravity pulls masses toward each other.",
    "hello world hi there thanks you are welcome good bad answer question",
    "the quick brown fox jumps over the lazy dog 0123456789",
]


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE (any text round-trips) with ``<pad>`` = 0, ``<eos>``, ``<bos>`` and chat tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   additional_special_tokens=SPECIAL[3:])
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="session")
def make_tokenizer():
    """``build_tokenizer(chat_template=...)``: a tokenizer with another (or no) chat template."""
    return build_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def plain_tokenizer():
    return build_tokenizer(chat_template=None)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


# ----------------------------------------------------------------------------- fixture files


@dataclasses.dataclass
class Fixture:
    path: str
    kept: int
    skipped: dict[str, int]
    kwargs: dict = dataclasses.field(default_factory=dict)
    valid: list = dataclasses.field(default_factory=list)  # the valid source rows, in file order
    rows: list = dataclasses.field(default_factory=list)  # every source row (where useful)


def _write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


GENERIC_VALID = [
    {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": "Lyon."},
    {"prompt": "How many legs does a spider have?", "chosen": "Eight.", "rejected": "Six."},
    {"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."},
    {"prompt": "Explain gravity briefly.", "chosen": "Masses attract.", "rejected": "It is magic."},
    {"prompt": "hello", "chosen": "hi there", "rejected": "go away"},
    {"prompt": "thanks", "chosen": "you are welcome", "rejected": "whatever"},
]


def write_generic(directory) -> Fixture:
    rows = list(GENERIC_VALID)
    bad = [
        ({"prompt": "hello", "chosen": "hi"}, "missing_field"),  # no rejected
        ({"prompt": None, "chosen": "a", "rejected": "b"}, "missing_field"),
        ({"prompt": "hello", "chosen": 3, "rejected": "b"}, "wrong_type"),
        ({"prompt": "hello", "chosen": "a", "rejected": {"x": 1}}, "wrong_type"),
        ({"prompt": "hello", "chosen": "", "rejected": "b"}, "empty_response"),
        ({"prompt": "hello", "chosen": "a", "rejected": "  \n"}, "empty_response"),
        ({"prompt": "hello", "chosen": "same", "rejected": "same"}, "identical_responses"),
        ({"prompt": "hello", "chosen": "same", "rejected": " same "}, "identical_responses"),
        ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty_prompt"),
    ]
    # interleaved: bad row i at index 2*i (while valid rows last), valid rows in between
    out, skipped = [], {}
    for i in range(max(len(rows), len(bad))):
        if i < len(bad):
            out.append(bad[i][0])
            skipped[bad[i][1]] = skipped.get(bad[i][1], 0) + 1
        if i < len(rows):
            out.append(rows[i])
    path = os.path.join(directory, "generic.jsonl")
    _write_jsonl(path, out)
    return Fixture(path, kept=len(rows), skipped=skipped, valid=rows)


def write_undecodable(directory) -> Fixture:
    path = os.path.join(directory, "undecodable.jsonl")
    with open(path, "wb") as f:
        f.write(b'{"prompt": "hello", "chosen": "hi there", "rejected": "go away"}\n')
        f.write(b'{"prompt": "hello \\ud800", "chosen": "a", "rejected": "b"}\n')  # lone surrogate
        f.write(b'{"prompt": "thanks", "chosen": "you are welcome", "rejected": "whatever"}\n')
        f.write(b'{"prompt": "hello", "chosen": "caf\xe9", "rejected": "b"}\n')  # latin-1 byte, not UTF-8
        f.write(b'{"prompt": "hello", "chosen": "a", "rejected": \n')  # truncated line
        f.write(b'\n')  # blank line: counted (every line of the file is accounted for)
        f.write(b'["not", "an", "object"]\n')
        f.write(b'{"prompt": "Tell me a joke.", "chosen": "Why did the chicken cross the road?", "rejected": "No."}\n')
    return Fixture(path, kept=3, skipped={"undecodable_text": 2, "malformed_json": 2, "blank_line": 1})


def write_parquet_mapped(directory) -> Fixture:
    """Parquet with other column names (mapping question/good/bad) and a binary prompt column."""
    question = [b"What is the capital of France?", b"hello", b"caf\xe9?", b"thanks", b"hello", b"Tell me a joke."]
    good = ["Paris.", "hi there", "a", "you are welcome", None, "No."]
    bad = ["Lyon.", "go away", "b", "whatever", "b", "No."]
    table = pa.table({"question": pa.array(question, pa.binary()), "good": good, "bad": bad,
                      "prompt": ["ignored"] * 6})
    path = os.path.join(directory, "mapped.parquet")
    pq.write_table(table, path)
    return Fixture(path, kept=3, skipped={"undecodable_text": 1, "missing_field": 1, "identical_responses": 1},
                   kwargs={"prompt": "question", "chosen": "good", "rejected": "bad"})


CONV_VALID = [
    {"chosen": [user("hello"), assistant("hi there")], "rejected": [user("hello"), assistant("go away")]},
    {"chosen": [user("What is the capital of France?"), assistant("Paris.")],
     "rejected": [user("What is the capital of France?"), assistant("Lyon.")]},
    # multi-turn: the shared prefix includes an assistant turn
    {"chosen": [user("hello"), assistant("hi"), user("Tell me a joke."),
                assistant("Why did the chicken cross the road?")],
     "rejected": [user("hello"), assistant("hi"), user("Tell me a joke."), assistant("No.")]},
    # with a system message
    {"chosen": [{"role": "system", "content": "Be brief."}, user("thanks"), assistant("you are welcome")],
     "rejected": [{"role": "system", "content": "Be brief."}, user("thanks"), assistant("whatever")]},
]


def write_conversational(directory) -> Fixture:
    bad = [
        ({"chosen": [user("hello"), assistant("a")], "rejected": [user("bye"), assistant("b")]}, "prompt_mismatch"),
        ({"chosen": [user("hello"), assistant("a")], "rejected": [user("hello"), assistant("a"), user("more"),
                                                                   assistant("b")]}, "prompt_mismatch"),
        ({"chosen": [user("hello"), assistant("a")], "rejected": [user("hello"), assistant("a")]},
         "identical_responses"),
        ({"chosen": [user("hello"), "not a message"], "rejected": [user("hello"), assistant("b")]}, "wrong_type"),
        ({"chosen": [user("hello"), {"role": "assistant"}], "rejected": [user("hello"), assistant("b")]},
         "missing_field"),
        ({"chosen": [user("hello"), assistant("")], "rejected": [user("hello"), assistant("b")]}, "empty_response"),
        ({"chosen": [assistant("a")], "rejected": [assistant("b")]}, "empty_prompt"),
    ]
    rows = CONV_VALID[:2] + [b for b, _ in bad] + CONV_VALID[2:]
    path = os.path.join(directory, "conversational.jsonl")
    _write_jsonl(path, rows)
    skipped = {}
    for _, reason in bad:
        skipped[reason] = skipped.get(reason, 0) + 1
    return Fixture(path, kept=len(CONV_VALID), skipped=skipped, valid=CONV_VALID)


HH_VALID = [
    {"chosen": "\n\nHuman: hello\n\nAssistant: hi there", "rejected": "\n\nHuman: hello\n\nAssistant: go away"},
    {"chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: Paris.",
     "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: Lyon."},
    {"chosen": "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: Tell me a joke.\n\nAssistant: "
               "Why did the chicken cross the road?",
     "rejected": "\n\nHuman: hello\n\nAssistant: hi\n\nHuman: Tell me a joke.\n\nAssistant: No."},
    {"chosen": "\n\nHuman: thanks\n\nAssistant: you are welcome",
     "rejected": "\n\nHuman: thanks\n\nAssistant: whatever"},
]


def write_hh(directory) -> Fixture:
    bad = [
        ({"chosen": "hello there", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, "malformed_transcript"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: ok", "rejected": "\n\nHuman: hi\n\nAssistant: b"},
         "malformed_transcript"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hey\n\nAssistant: b"},
         "prompt_mismatch"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: b"}, "empty_response"),
        ({"chosen": "\n\nHuman: hi\n\nAssistant: same", "rejected": "\n\nHuman: hi\n\nAssistant: same"},
         "identical_responses"),
    ]
    rows = HH_VALID[:1] + [b for b, _ in bad] + HH_VALID[1:]
    path = os.path.join(directory, "hh.jsonl")
    _write_jsonl(path, rows)
    skipped = {}
    for _, reason in bad:
        skipped[reason] = skipped.get(reason, 0) + 1
    return Fixture(path, kept=len(HH_VALID), skipped=skipped, valid=HH_VALID)


# PKU rows: (prompt, response_0, response_1, better_response_id, safer_response_id)
PKU_ROWS = [
    ("hello", "hi there", "go away", 0, 0),
    ("What is the capital of France?", "Lyon.", "Paris.", 1, 1),
    ("Tell me a joke.", "No.", "Why did the chicken cross the road?", 1, 0),  # better != safer
    ("thanks", "you are welcome", "whatever", 0, 1),  # better != safer
    ("hello", "a", "b", 2, 0),  # better: invalid_label; safer: valid
    ("hello", "a", None, 0, 0),  # missing_field
    ("hello", "same", "same", 0, 1),  # identical_responses
]


def write_pku(directory) -> Fixture:
    cols = list(zip(*PKU_ROWS))
    table = pa.table({"prompt": list(cols[0]), "response_0": list(cols[1]), "response_1": list(cols[2]),
                      "better_response_id": pa.array(cols[3], pa.int64()),
                      "safer_response_id": pa.array(cols[4], pa.int64()),
                      "is_response_0_safe": [True] * len(PKU_ROWS)})
    path = os.path.join(directory, "pku.parquet")
    pq.write_table(table, path)
    return Fixture(path, kept=4, skipped={"invalid_label": 1, "missing_field": 1, "identical_responses": 1},
                   rows=PKU_ROWS)


def write_ultrafeedback(directory) -> Fixture:
    def row(prompt, chosen, rejected, cp=None):
        return {"prompt": prompt, "prompt_id": str(abs(hash(prompt)) % 1000),
                "chosen": [user(cp or prompt), assistant(chosen)], "rejected": [user(prompt), assistant(rejected)],
                "messages": [user(cp or prompt), assistant(chosen)], "score_chosen": 8.0, "score_rejected": 3.0}

    rows = [
        row("What is the capital of France?", "Paris.", "Lyon."),
        row("hello", "hi there", "go away"),
        row("hello", "same", "same"),  # identical_responses
        row("hello", "a", "b", cp="hi"),  # prompt_mismatch
        row("thanks", "you are welcome", "whatever"),
    ]
    path = os.path.join(directory, "ultrafeedback.parquet")
    datasets.Dataset.from_list(rows).to_parquet(path)
    return Fixture(path, kept=3, skipped={"identical_responses": 1, "prompt_mismatch": 1})


SFT_MESSAGES = [
    {"messages": [user("hello"), assistant("hi there")]},
    {"messages": [user("What is the capital of France?"), assistant("Paris.")]},
    {"messages": [user("hello"), assistant("hi"), user("Tell me a joke."), assistant("No.")]},
    {"messages": [{"role": "system", "content": "Be brief."}, user("thanks"), assistant("you are welcome")]},
]


def write_sft_messages(directory) -> Fixture:
    bad = [
        ({"messages": [user("hello"), assistant("hi"), user("more?")]}, "invalid_role"),
        ({"messages": [assistant("hi")]}, "empty_prompt"),
        ({"messages": [user("hello"), assistant(" ")]}, "empty_response"),
        ({"messages": "hello"}, "wrong_type"),
        ({"messages": None}, "missing_field"),
    ]
    rows = SFT_MESSAGES[:2] + [b for b, _ in bad] + SFT_MESSAGES[2:]
    path = os.path.join(directory, "sft_messages.jsonl")
    _write_jsonl(path, rows)
    skipped = {}
    for _, reason in bad:
        skipped[reason] = skipped.get(reason, 0) + 1
    return Fixture(path, kept=len(SFT_MESSAGES), skipped=skipped, valid=SFT_MESSAGES)


def write_sft_prompt_completion(directory) -> Fixture:
    rows = [
        {"prompt": "hello", "completion": "hi there"},
        {"prompt": "hello", "completion": ""},  # empty_response
        {"prompt": [user("What is the capital of France?")], "completion": [assistant("Paris.")]},
        {"prompt": "thanks"},  # missing_field
        {"prompt": "Tell me a joke.", "completion": "No."},
    ]
    path = os.path.join(directory, "sft_pc.jsonl")
    _write_jsonl(path, rows)
    return Fixture(path, kept=3, skipped={"empty_response": 1, "missing_field": 1})


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture(scope="session")
def fixtures(fixture_dir):
    """name -> :class:`Fixture` for each schema's file."""
    return {
        "generic": write_generic(fixture_dir),
        "undecodable": write_undecodable(fixture_dir),
        "parquet_mapped": write_parquet_mapped(fixture_dir),
        "conversational": write_conversational(fixture_dir),
        "hh_rlhf": write_hh(fixture_dir),
        "pku_saferlhf": write_pku(fixture_dir),
        "ultrafeedback": write_ultrafeedback(fixture_dir),
        "sft_messages": write_sft_messages(fixture_dir),
        "sft_prompt_completion": write_sft_prompt_completion(fixture_dir),
    }
