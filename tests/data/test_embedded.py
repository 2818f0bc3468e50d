"""Tests of the embedded default task (lnpo.data.embedded)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import subprocess
import sys

import pytest

from lnpo.data import embedded as E

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"sft": 60, "train_prefs": 40, "eval_prefs": 10, "ood_prompts": 10}


def _read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _tree_bytes(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


def _user(row):
    return row["prompt"][0]["content"] if "prompt" in row else row["messages"][0]["content"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The default-size task for seed 0, loaded."""
    paths = E.materialize(tmp_path_factory.mktemp("embedded"), seed=0)
    return {"paths": paths, **{key: _read_jsonl(paths[key]) for key in E.DEFAULT_SIZES}}


@pytest.fixture(scope="module")
def task_tokenizer(task):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(task["paths"]["tokenizer"])


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different_data(tmp_path):
    a = _tree_bytes(os.path.dirname(E.materialize(tmp_path / "a", seed=3, sizes=SMALL)["manifest"]))
    b = _tree_bytes(os.path.dirname(E.materialize(tmp_path / "b", seed=3, sizes=SMALL)["manifest"]))
    assert a == b
    assert {"sft.jsonl", "train_prefs.jsonl", "eval_prefs.jsonl", "ood_prompts.jsonl", "manifest.json"} <= set(a)
    assert os.path.join("tokenizer", "tokenizer.json") in a

    c = _tree_bytes(os.path.dirname(E.materialize(tmp_path / "c", seed=4, sizes=SMALL)["manifest"]))
    for name in ("sft.jsonl", "train_prefs.jsonl", "eval_prefs.jsonl", "ood_prompts.jsonl"):
        assert a[name] != c[name], name
    # The tokenizer is trained on a seed-independent corpus: token ids do not depend on the seed.
    assert {k: v for k, v in a.items() if k.startswith("tokenizer")} == {
        k: v for k, v in c.items() if k.startswith("tokenizer")
    }


def test_same_bytes_in_a_fresh_process_with_other_hash_seed(tmp_path):
    """Guards against any dependence on hash randomization or process state (no transformers import)."""
    paths = E.materialize(tmp_path, seed=5, sizes=SMALL)
    code = (
        "import hashlib, json; from lnpo.data import embedded as E; "
        f"sizes = {{**E.DEFAULT_SIZES, **{SMALL!r}}}; "
        "out = {k: hashlib.sha256(v).hexdigest() for k, v in E.files.split_bytes(1, 5, sizes).items()}; "
        "out['bpe'] = hashlib.sha256(E.tokenizer._train_bpe(E.corpus_texts()).to_str().encode()).hexdigest(); "
        "print(json.dumps(out))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345",
           "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True)
    there = json.loads(result.stdout)
    manifest = json.load(open(paths["manifest"]))["files"]
    for key in ("sft", "train_prefs", "eval_prefs", "ood_prompts"):
        assert there[key] == manifest[E.FILES[key]], key
    with open(os.path.join(paths["tokenizer"], "tokenizer.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert there["bpe"] == hashlib.sha256(E.tokenizer._train_bpe(E.corpus_texts()).to_str().encode()).hexdigest()
    assert saved["model"] == json.loads(E.tokenizer._train_bpe(E.corpus_texts()).to_str())["model"]


def test_materialize_skips_up_to_date_directory_and_repairs_changed_files(tmp_path):
    paths = E.materialize(tmp_path, seed=0, sizes=SMALL)
    with open(paths["manifest"]) as f:
        manifest = json.load(f)
    assert (manifest["seed"], manifest["version"], manifest["sizes"]) == (0, E.EMBEDDED_VERSION,
                                                                           {**E.DEFAULT_SIZES, **SMALL})
    assert set(manifest["files"]) == set(_tree_bytes(tmp_path)) - {"manifest.json"}
    before = {name: os.stat(tmp_path / name).st_mtime_ns for name in manifest["files"]}

    os.utime(paths["sft"], ns=(1, 1))  # an untouched file keeps this mtime if nothing is rewritten
    assert E.materialize(tmp_path, seed=0, sizes=SMALL) == paths
    assert os.stat(paths["sft"]).st_mtime_ns == 1
    assert {n: os.stat(tmp_path / n).st_mtime_ns for n in manifest["files"] if n != "sft.jsonl"} == {
        n: t for n, t in before.items() if n != "sft.jsonl"
    }

    original = open(paths["train_prefs"], "rb").read()
    with open(paths["train_prefs"], "ab") as f:
        f.write(b"{}\n")
    E.materialize(tmp_path, seed=0, sizes=SMALL)
    assert open(paths["train_prefs"], "rb").read() == original

    E.materialize(tmp_path, seed=1, sizes=SMALL)
    assert open(paths["train_prefs"], "rb").read() != original
    assert json.load(open(paths["manifest"]))["seed"] == 1
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary leftovers


def test_sizes(tmp_path):
    paths = E.materialize(tmp_path, seed=0, sizes={"sft": 7, "train_prefs": 5, "eval_prefs": 3, "ood_prompts": 2})
    assert [len(_read_jsonl(paths[k])) for k in ("sft", "train_prefs", "eval_prefs", "ood_prompts")] == [7, 5, 3, 2]
    with pytest.raises(ValueError, match="unknown split"):
        E.materialize(tmp_path / "x", sizes={"test": 3})


def test_default_sizes_and_row_format(task):
    for key, n in E.DEFAULT_SIZES.items():
        assert len(task[key]) == n, key
    for row in task["sft"]:
        assert list(row) == ["messages"]
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
    for key in ("train_prefs", "eval_prefs", "ood_prompts"):
        for row in task[key]:
            assert list(row) == ["prompt", "chosen", "rejected"]
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
            assert row["chosen"][0]["content"] != row["rejected"][0]["content"]


# ----------------------------------------------------------------------------- scorer


def _examples(ood: bool, n_per_template: int = 8):
    rng = random.Random(0)
    table = E.OOD_TEMPLATES if ood else E.TEMPLATES
    for kind in E.KINDS:
        for template in table[kind]:
            for _ in range(n_per_template):
                args = E.sample_args(rng, kind)
                yield kind, E.make_question(kind, template, args, ood), rng


@pytest.mark.parametrize("ood", [False, True])
def test_scorer_ranks_concise_over_verbose_over_wrong_over_unparseable(ood):
    kinds_seen = set()
    for kind, q, rng in _examples(ood):
        kinds_seen.add(kind)
        parsed = E.parse_prompt(q.prompt)
        assert (parsed.kind, parsed.answer, parsed.ood) == (kind, q.answer, ood), q.prompt

        fillers = rng.sample(E.OPENERS + E.CLOSERS, rng.randint(1, 3))
        wrong = E.wrong_answer(rng, q)
        assert wrong != q.answer
        concise = E.score(q.prompt, E.concise_response(q.answer))
        verbose = E.score(q.prompt, E.verbose_response(q.answer, fillers))
        wrong_concise = E.score(q.prompt, E.concise_response(wrong))
        wrong_verbose = E.score(q.prompt, E.verbose_response(wrong, fillers))
        garbled = E.score(q.prompt, "The answer is " + q.answer + " " + q.answer.split()[-1] + ".")
        unparseable = [E.score(q.prompt, r) for r in ("", q.answer, "I am not sure.", E.OPENERS[0])]

        assert concise == 1.0
        assert 0.5 <= verbose < concise
        assert E.score(q.prompt, E.verbose_response(q.answer, fillers[:1])) > E.score(
            q.prompt, E.verbose_response(q.answer, fillers + [f for f in E.CLOSERS if f not in fillers][:1])
        )
        assert 0.0 < wrong_verbose <= wrong_concise < verbose
        assert 0.0 < garbled < verbose
        assert max(unparseable) == 0.0 < wrong_verbose
    assert kinds_seen == set(E.KINDS)


def test_score_formula_and_prompt_forms():
    prompt = "What is 2 plus 3?"
    assert E.score(prompt, "The answer is 5.") == 1.0
    assert E.score(prompt, "The answer is 5") == 1.0  # a missing final period is tolerated
    # 5 words outside the answer sentence: 1 - 0.025 * 5
    assert E.score(prompt, "Let me think about this. The answer is 5.") == pytest.approx(0.875)
    assert E.score(prompt, "The answer is 6.") == pytest.approx(0.2)
    assert E.score(prompt, "The answer is 6. I hope this helps!") == pytest.approx(0.2 * (1 - 0.1))
    assert E.score(prompt, " ".join(["Thanks for asking."] * 20) + " The answer is 5.") == pytest.approx(0.5)
    assert E.score(prompt, "5") == 0.0
    assert E.score(prompt, "The answer is.") == 0.0
    assert E.parse_response("I think. The answer is  5 . Bye") == ("5", 3)
    g = E.grade(prompt, "Sure, I can help. The answer is 5. Thanks for asking.")
    assert (g.answer, g.correct, g.extra_words) == ("5", True, 7)
    # A rendered chat prompt scores like its user text.
    rendered = f"<|bos|><|user|>{prompt}<|assistant|>"
    assert (E.score(rendered, "The answer is 5. Thanks for asking.")
            == E.score(prompt, "The answer is 5. Thanks for asking."))
    assert E.score("Repeat the word cat three times.", "The answer is cat cat cat.") == 1.0
    assert E.score("Repeat the word cat three times.", "The answer is cat cat.") == pytest.approx(0.2)
    assert E.score("Read 120 from right to left.", "The answer is 021.") == 1.0
    with pytest.raises(ValueError):
        E.score("What is the capital of France?", "The answer is Paris.")


def test_ood_split_chosen_is_reference_and_beats_rejected(task):
    for row in task["ood_prompts"]:
        prompt = _user(row)
        assert E.parse_prompt(prompt).ood
        assert E.score(prompt, row["chosen"][0]["content"]) == 1.0
        assert E.score(prompt, row["rejected"][0]["content"]) < 1.0
    kinds = {E.parse_prompt(_user(row)).kind for row in task["ood_prompts"]}
    assert kinds == set(E.KINDS)


def test_sft_answers_are_correct_and_about_half_verbose(task):
    grades = [E.grade(_user(r), r["messages"][1]["content"]) for r in task["sft"]]
    assert all(g.correct for g in grades)
    verbose = sum(g.extra_words > 0 for g in grades) / len(grades)
    assert 0.45 < verbose < 0.55
    assert {E.parse_prompt(_user(r)).kind for r in task["sft"]} == set(E.KINDS)


# ----------------------------------------------------------------------------- annotator


def _pair_stats(rows):
    ties, diffs = [], []
    for row in rows:
        prompt = _user(row)
        c, r = row["chosen"][0]["content"], row["rejected"][0]["content"]
        gc, gr = E.grade(prompt, c), E.grade(prompt, r)
        wc, wr = len(c.split()), len(r.split())
        p = E.preference_probability(gc.correct, wc, gr.correct, wr)  # P(annotator picks the chosen one)
        if gc.correct == gr.correct and wc != wr:
            ties.append((wc > wr, p if wc > wr else 1 - p))
        elif gc.correct != gr.correct:
            diffs.append((gc.correct, p if gc.correct else 1 - p))
    return ties, diffs


def _check_rate(observed, expected_probs, lo, hi):
    n = len(observed)
    rate = sum(observed) / n
    expected = sum(expected_probs) / n
    sigma = math.sqrt(sum(q * (1 - q) for q in expected_probs)) / n
    assert lo <= rate <= hi, (rate, lo, hi)
    assert abs(rate - expected) < 4 * sigma + 1e-9, (rate, expected, sigma)


def test_annotator_prefers_correct_and_longer(task):
    rows = task["train_prefs"]
    ties, diffs = _pair_stats(rows)
    assert len(ties) > 500 and len(diffs) > 500
    # When correctness ties, the longer response wins ~75% of the time ...
    _check_rate([longer for longer, _ in ties], [q for _, q in ties], 0.70, 0.80)
    # ... and when it differs, the correct one wins ~90% of the time.
    _check_rate([correct for correct, _ in diffs], [q for _, q in diffs], 0.85, 0.95)
    # So chosen responses are longer on average and score higher on average.
    chosen_words = sum(len(r["chosen"][0]["content"].split()) for r in rows) / len(rows)
    rejected_words = sum(len(r["rejected"][0]["content"].split()) for r in rows) / len(rows)
    assert chosen_words > rejected_words + 1.5
    assert sum(E.score(_user(r), r["chosen"][0]["content"]) for r in rows) > sum(
        E.score(_user(r), r["rejected"][0]["content"]) for r in rows
    )


def test_eval_pairs_follow_the_same_annotator(task):
    ties, diffs = _pair_stats(task["eval_prefs"])
    # 200 pairs: loose bounds, but a missing bias (50%) or inverted labels fail.
    assert 0.6 < sum(longer for longer, _ in ties) / len(ties) < 0.9
    assert sum(correct for correct, _ in diffs) / len(diffs) > 0.75


# ----------------------------------------------------------------------------- splits


def test_ood_prompts_do_not_occur_in_training_and_eval_is_held_out(task):
    sft = {_user(r) for r in task["sft"]}
    train = {_user(r) for r in task["train_prefs"]}
    evals = {_user(r) for r in task["eval_prefs"]}
    ood = {_user(r) for r in task["ood_prompts"]}
    assert not ood & (sft | train | evals)
    assert not evals & (sft | train)
    assert all(E.is_heldout(p) for p in evals)
    assert not any(E.is_heldout(p) for p in sft | train)
    # Held-out prompts are a fixed ~10% of the prompt space and the kinds stay balanced.
    rng = random.Random(0)
    draws = [E.sample_question(rng).prompt for _ in range(5000)]
    assert abs(sum(map(E.is_heldout, draws)) / len(draws) - E.HELDOUT_FRACTION) < 0.02
    eval_kinds = [E.parse_prompt(p).kind for p in (_user(r) for r in task["eval_prefs"])]
    assert min(eval_kinds.count(k) for k in E.KINDS) >= 15
    for prompt in sft | train | evals:
        assert not E.parse_prompt(prompt).ood, prompt
    # The OOD phrasings themselves never occur in training.
    training_templates = {t for ts in E.TEMPLATES.values() for t in ts}
    assert not training_templates & {t for ts in E.OOD_TEMPLATES.values() for t in ts}


def test_ood_prompts_use_only_tokens_seen_in_training_prompts(task, task_tokenizer):
    """OOD phrasings are unseen recombinations, not new words (a tiny model could not read those)."""
    seen = set()
    for ids in task_tokenizer([_user(r) for r in task["sft"] + task["train_prefs"]])["input_ids"]:
        seen.update(ids)
    for ids, row in zip(task_tokenizer([_user(r) for r in task["ood_prompts"]])["input_ids"], task["ood_prompts"]):
        assert set(ids) <= seen, (_user(row), task_tokenizer.convert_ids_to_tokens(sorted(set(ids) - seen)))


def test_template_phrasings_are_unambiguous():
    regexes = [(k, E.task._template_regex(t)) for table in (E.TEMPLATES, E.OOD_TEMPLATES)
               for k, ts in table.items() for t in ts]
    for kind, q, _ in list(_examples(False, 4)) + list(_examples(True, 4)):
        assert [k for k, rx in regexes if rx.fullmatch(q.prompt)] == [kind], q.prompt


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_loads_round_trips_and_has_chat_template(task, task_tokenizer):
    from transformers import AutoTokenizer

    tok = task_tokenizer
    assert isinstance(tok, type(AutoTokenizer.from_pretrained(task["paths"]["tokenizer"])))
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert tok.pad_token_id == 0
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}) == 3
    assert len(tok) < 1024
    config = json.load(open(os.path.join(task["paths"]["tokenizer"], "tokenizer_config.json")))
    assert config["chat_template"] == E.CHAT_TEMPLATE

    for text in ("The answer is 42.", "  odd   spacing\nand ünïcödé ✓ 0123", E.verbose_response("7", E.OPENERS[:2])):
        assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.tokenize("12345") == ["1", "2", "3", "4", "5"]  # digits are single tokens
    for word in E.WORDS:
        assert len(tok.tokenize(" " + word)) == 1, word

    messages = [{"role": "user", "content": "What is 2 plus 3?"}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|bos|><|user|>What is 2 plus 3?<|assistant|>"
    conversation = messages + [{"role": "assistant", "content": "The answer is 5."}]
    full = tok.apply_chat_template(conversation, tokenize=False)
    assert full == prompt + "The answer is 5.<|eos|>"
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert prompt_ids[0] == tok.bos_token_id and full_ids[-1] == tok.eos_token_id
    assert tok.decode(full_ids[len(prompt_ids) : -1]) == "The answer is 5."


def _render(conversation):
    """The chat template, by hand (checked against apply_chat_template below)."""
    text = "<|bos|>"
    for m in conversation:
        text += f"<|{m['role']}|>{m['content']}" + ("<|eos|>" if m["role"] == "assistant" else "")
    return text


def test_every_text_fits_the_max_length(task, task_tokenizer):
    tokenizer = task_tokenizer
    conversations = [r["messages"] for r in task["sft"]]
    for key in ("train_prefs", "eval_prefs", "ood_prompts"):
        for r in task[key]:
            conversations += [r["prompt"] + r["chosen"], r["prompt"] + r["rejected"]]
    sample = conversations[::50]
    assert tokenizer.apply_chat_template(sample, tokenize=False) == [_render(c) for c in sample]
    texts = [_render(c) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert max(lengths) <= 48 <= E.MAX_LENGTH
    assert tokenizer.model_max_length == E.MAX_LENGTH
    for text in texts[:50]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_build_tokenizer_is_deterministic():
    a = E.build_tokenizer(E.corpus_texts())
    b = E.build_tokenizer(E.corpus_texts())
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.chat_template == E.CHAT_TEMPLATE


# ----------------------------------------------------------------------------- the project's loaders


def test_loads_and_tokenizes_through_the_project_data_layer(tmp_path):
    """The embedded files go through lnpo.data's ordinary loaders and tokenizer contract without a skip."""
    from transformers import AutoTokenizer

    from lnpo import data

    sizes = {"sft": 30, "train_prefs": 30, "eval_prefs": 10, "ood_prompts": 10}
    paths = E.materialize(tmp_path / "task", seed=0, sizes=sizes)
    tok = AutoTokenizer.from_pretrained(paths["tokenizer"])
    cache = str(tmp_path / "cache")

    sft, report = data.load_sft(paths["sft"], strict=True, cache_dir=cache)
    assert (report.kept, report.skipped) == (sizes["sft"], {})
    tokens, report = data.tokenize_sft(sft, tok, max_len=E.MAX_LENGTH, truncation="drop", strict=True)
    assert (report.kept, report.skipped, report.adjusted) == (sizes["sft"], {}, {})
    source = _read_jsonl(paths["sft"])
    for row, src in zip(tokens, source):
        assert row["prompt_ids"][:2] == tok.convert_tokens_to_ids(["<|bos|>", "<|user|>"])
        assert row["prompt_ids"][-1] == tok.convert_tokens_to_ids("<|assistant|>")
        assert row["completion_ids"][-1] == tok.eos_token_id
        assert tok.decode(row["completion_ids"][:-1]) == src["messages"][1]["content"]

    for key in ("train_prefs", "eval_prefs", "ood_prompts"):
        pairs, report = data.load_preferences(paths[key], strict=True, cache_dir=cache)
        assert (report.kept, report.skipped) == (sizes[key], {}), key
        tokens, report = data.tokenize_preferences(pairs, tok, max_len=E.MAX_LENGTH, truncation="drop", strict=True)
        assert (report.kept, report.skipped, report.adjusted) == (sizes[key], {}, {}), key
        for row, src in zip(tokens, _read_jsonl(paths[key])):
            assert tok.decode(row["chosen_ids"][:-1]) == src["chosen"][0]["content"]
            assert tok.decode(row["rejected_ids"][:-1]) == src["rejected"][0]["content"]
            assert row["chosen_ids"][-1] == row["rejected_ids"][-1] == tok.eos_token_id
