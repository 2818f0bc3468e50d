"""The embedded task version 2 (lnpo.data.embedded.v2), its scorer, and version 1 kept byte for byte."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from lnpo.data import embedded as E
from lnpo.data.embedded import v2
from lnpo.errors import ConfigError

SMALL = {"sft": 60, "train_prefs": 40, "eval_prefs": 10, "ood_prompts": 10}
#: SHA-256 of version 1's JSONL files for seed 0 and SMALL sizes, recorded before the package split
#: (pure Python `random` streams: independent of the tokenizers / transformers versions).
V1_SMALL_SHA256 = {
    "sft": "c7f18d3da8085032f465b58a47c1489a72a2d16d478e2638701334eb672453e6",
    "train_prefs": "92ee21736505be62c6d323c318d0fdc488bc7f9eb0dc3e285a10bfbebd6f691b",
    "eval_prefs": "92e676ffa34bdc271c56932e9532467f7b57bd2c320f1aca5bc1d6d3890894e5",
    "ood_prompts": "630494cabccdd6a852e969e84ab1a8d544528f9dc8c9a19fd6408bc3f86a3450",
}


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def task2(tmp_path_factory):
    paths = E.materialize(tmp_path_factory.mktemp("embedded_v2"), seed=0, version=2)
    return {"paths": paths, **{key: _read_jsonl(paths[key]) for key in E.DEFAULT_SIZES}}


def test_version_1_bytes_are_unchanged_by_version_2(tmp_path):
    one = E.files.split_bytes(1, 0, SMALL)
    assert {k: hashlib.sha256(v).hexdigest() for k, v in one.items() if k in V1_SMALL_SHA256} == V1_SMALL_SHA256
    paths = E.materialize(tmp_path / "v1", seed=0, sizes=SMALL)
    with open(paths["manifest"]) as f:
        assert json.load(f)["version"] == 1
    two = E.files.split_bytes(2, 0, SMALL)
    assert all(one[k] != two[k] for k in one)


def test_version_2_is_deterministic_and_recorded_in_the_manifest(tmp_path):
    a = E.materialize(tmp_path / "a", seed=3, sizes=SMALL, version=2)
    b = E.materialize(tmp_path / "b", seed=3, sizes=SMALL, version=2)
    for key in SMALL:
        with open(a[key], "rb") as fa, open(b[key], "rb") as fb:
            assert fa.read() == fb.read(), key
    with open(a["manifest"]) as f:
        manifest = json.load(f)
    assert (manifest["version"], manifest["seed"]) == (2, 3)
    # a directory holding version 1 is rewritten for version 2 (the manifest's version differs)
    c = E.materialize(tmp_path / "a", seed=3, sizes=SMALL, version=1)
    with open(c["manifest"]) as f:
        assert json.load(f)["version"] == 1


def test_unknown_version_is_a_one_line_config_error(tmp_path):
    for bad in (0, 3, "2", True):
        with pytest.raises(ConfigError, match=r"embedded task version .*expected one of \[1, 2\]"):
            E.materialize(tmp_path, seed=0, sizes=SMALL, version=bad)


def test_sft_data_have_a_quarter_wrong_answers_and_lengths_from_5_to_150_tokens(task2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task2["paths"]["tokenizer"])
    grades = [E.grade(r["messages"][0]["content"], r["messages"][1]["content"], version=2) for r in task2["sft"]]
    n = len(grades)
    wrong = sum(not g.correct for g in grades)
    assert all(g.answer is not None for g in grades)
    assert abs(wrong / n - v2.SFT_P_WRONG) < 4 * math.sqrt(v2.SFT_P_WRONG * (1 - v2.SFT_P_WRONG) / n)
    lengths = np.asarray([len(ids) for ids in tok([r["messages"][1]["content"] for r in task2["sft"]])["input_ids"]])
    assert lengths.min() <= 8 and lengths.max() >= 140 and 30 < lengths.mean() < 60
    p_concise = v2.SENTENCE_WEIGHTS[0] / sum(v2.SENTENCE_WEIGHTS)
    concise = np.mean([g.extra_words == 0 for g in grades])
    assert abs(concise - p_concise) < 4 * math.sqrt(p_concise * (1 - p_concise) / n)


def test_every_version_2_response_opens_with_its_answer_sentence(task2):
    """Explanations follow the answer, so a longer response never moves the answer further from the question."""
    responses = [r["messages"][1]["content"] for r in task2["sft"]]
    responses += [r[k][0]["content"] for r in task2["train_prefs"] for k in ("chosen", "rejected")]
    assert all(text.startswith("The answer is ") for text in responses)
    assert max(len(text.split()) for text in responses) > 100


def test_annotator_formula_and_pairs_follow_it(task2):
    def sigmoid(x):
        return 1 / (1 + math.exp(-x))

    assert v2.preference_probability(True, 10, False, 10) == pytest.approx(sigmoid(3.0))
    assert v2.preference_probability(False, 100, True, 5) == pytest.approx(sigmoid(-3.0 + 0.25 * math.log(20)))
    assert v2.preference_probability(True, 5, True, 100) == pytest.approx(sigmoid(-0.25 * math.log(20)))
    # Labels follow the annotator: with q = P(first-by-text response wins), the chosen one is the first
    # with probability q, so the count of "first chosen" has mean sum(q) and variance sum(q (1 - q)).
    q = np.asarray([v2.preference_probability(*pair) for pair in _pairs_unordered(task2["train_prefs"])])
    first_chosen = np.asarray([r["chosen"][0]["content"] < r["rejected"][0]["content"] for r in task2["train_prefs"]])
    assert abs(first_chosen.sum() - q.sum()) < 4 * math.sqrt(np.sum(q * (1 - q)))
    correct_chosen = np.mean([E.grade(r["prompt"][0]["content"], r["chosen"][0]["content"], version=2).correct
                              for r in task2["train_prefs"]])
    correct_rejected = np.mean([E.grade(r["prompt"][0]["content"], r["rejected"][0]["content"], version=2).correct
                                for r in task2["train_prefs"]])
    assert correct_chosen > 0.75 and correct_rejected < 0.45


def _pairs_unordered(rows):
    """(correct_a, words_a, correct_b, words_b) with a the response that comes first by text."""
    out = []
    for r in rows:
        prompt = r["prompt"][0]["content"]
        a, b = sorted([r["chosen"][0]["content"], r["rejected"][0]["content"]])
        out.append((E.grade(prompt, a, version=2).correct, len(a.split()), E.grade(prompt, b, version=2).correct,
                    len(b.split())))
    return out


def test_version_2_scorer_formula():
    prompt = "What is 3 plus 4?"
    explanation = " ".join(["word"] * 50)
    assert E.score(prompt, "The answer is 7.", version=2) == 1.0
    assert E.score(prompt, f"{explanation}. The answer is 7.", version=2) == pytest.approx(1.0 - 0.002 * 50)
    assert E.score(prompt, " ".join(["word"] * 150) + ". The answer is 7.", version=2) == pytest.approx(0.8)
    assert E.score(prompt, f"{explanation}. The answer is 8.", version=2) == pytest.approx(0.2 * (1 - 0.1))
    assert E.score(prompt, "Seven.", version=2) == 0.0
    # version 1's formula is unchanged: 0.025 per extra word, capped at 0.5
    assert E.score(prompt, f"{explanation}. The answer is 7.") == pytest.approx(0.5)
    assert E.score(prompt, "Thanks for asking. The answer is 7.") == pytest.approx(1 - 0.025 * 3)


def test_scorer_specs_name_the_version():
    from lnpo.evaluate.scorers import make_scorer

    assert (E.scorer_spec(1), E.scorer_spec(2)) == ("embedded", "embedded-v2")
    assert (E.scorer_version("embedded"), E.scorer_version("embedded-v2"), E.scorer_version("jax:/x")) == (1, 2, None)
    prompt, response = "What is 3 plus 4?", " ".join(["word"] * 40) + ". The answer is 7."
    for spec, version in (("embedded", 1), ("embedded-v2", 2)):
        scorer = make_scorer(spec)
        assert scorer.spec == spec
        assert scorer.score([prompt], [response])[0] == E.score(prompt, response, version=version)


def test_every_version_2_text_fits_its_max_length(task2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(task2["paths"]["tokenizer"])
    conversations = [r["messages"] for r in task2["sft"]]
    for key in ("train_prefs", "eval_prefs", "ood_prompts"):
        conversations += [r["prompt"] + r["chosen"] for r in task2[key]] + [r["prompt"] + r["rejected"]
                                                                          for r in task2[key]]
    texts = tok.apply_chat_template(conversations, tokenize=False)
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert 170 <= max(lengths) <= v2.MAX_LENGTH == E.MAX_LENGTHS[2] == tok.model_max_length
    assert all(tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t for t in texts[:50])


def test_version_2_ood_prompts_are_unseen_and_chosen_is_the_reference(task2):
    train_prompts = {r["messages"][0]["content"] for r in task2["sft"]}
    train_prompts |= {r["prompt"][0]["content"] for r in task2["train_prefs"]}
    for r in task2["ood_prompts"]:
        prompt = r["prompt"][0]["content"]
        assert E.parse_prompt(prompt).ood and prompt not in train_prompts
        assert E.score(prompt, r["chosen"][0]["content"], version=2) == 1.0
        assert E.score(prompt, r["rejected"][0]["content"], version=2) < 1.0
