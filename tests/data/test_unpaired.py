"""Unpaired (KTO) data: TRL's unpaired format, the conversion from pairs, tokenization, the pairs layout
with KL completions, and the iterator's labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lnpo.data import PairIterator, load_preferences
from lnpo.data.layouts import LAYOUTS
from lnpo.data.unpaired import kl_partners, kto_pairs, load_unpaired, tokenize_unpaired, unpair_preferences


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(r if isinstance(r, str) else json.dumps(r))
            f.write("\n")
    return str(path)


def test_unpairing_matches_trl(fixtures, cache_dir):
    from trl.data_utils import unpair_preference_dataset

    pairs, _ = load_preferences(fixtures["generic"].path, cache_dir=cache_dir)
    ours = unpair_preferences(pairs)
    theirs = unpair_preference_dataset(pairs.remove_columns(["source_row"]), batch_size=None)
    col = lambda ds, c: list(ds[c])  # noqa: E731
    assert col(ours, "prompt") == col(theirs, "prompt") and col(ours, "completion") == col(theirs, "completion")
    assert col(ours, "label") == col(theirs, "label") == [True] * len(pairs) + [False] * len(pairs)
    assert col(ours, "source_row") == col(pairs, "source_row") * 2


def test_load_unpaired_counts_bad_labels_and_rows(tmp_path):
    good = {"prompt": "What is 2+2?", "completion": "It is four.", "label": True}
    rows = [good, {**good, "label": False}, {**good, "label": 1}, {**good, "label": "yes"},
            {"prompt": "x", "completion": "y"}, {**good, "completion": ""},
            {"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": "yo"}],
             "label": False}]
    path = _write(tmp_path / "kto.jsonl", rows)
    ds, report = load_unpaired(path)
    assert list(ds["label"]) == [True, False, False]
    assert list(ds["source_row"]) == [0, 1, 6]
    assert report.kept == 3 and report.skipped == {"empty_response": 1, "invalid_label": 3}
    assert report.total == len(rows)
    labels_only = _write(tmp_path / "labels.jsonl", [good, {**good, "label": None}])
    with pytest.raises(ValueError, match=r"labels.jsonl row 1: label must be true or false, got None"):
        load_unpaired(labels_only, strict=True)


def test_kl_partner_is_the_next_example_with_another_prompt():
    np.testing.assert_array_equal(kl_partners([(1,), (1,), (2,), (3,), (3,)]), [2, 2, 3, 0, 0])
    np.testing.assert_array_equal(kl_partners([(1,), (1,)]), [0, 1])  # no other prompt: itself


@pytest.mark.parametrize("layout", LAYOUTS)
def test_kto_pairs_through_the_iterator(fixtures, cache_dir, tokenizer, layout):
    pairs, _ = load_preferences(fixtures["generic"].path, cache_dir=cache_dir)
    tokens, report = tokenize_unpaired(unpair_preferences(pairs), tokenizer, max_len=40, max_prompt_len=24)
    assert report.kept == len(tokens) == 2 * len(pairs)
    ds = kto_pairs(tokens, max_len=40)
    partner = kl_partners([tuple(p) for p in tokens["prompt_ids"]])
    for i in range(len(ds)):
        row = ds[i]
        assert row["chosen_ids"] == tokens[i]["completion_ids"] and row["label"] == int(tokens[i]["label"])
        kl = tokens[int(partner[i])]["completion_ids"]
        assert row["rejected_ids"] == kl[: 40 - len(row["prompt_ids"])]
        assert tokens[int(partner[i])]["prompt_ids"] != row["prompt_ids"]
        assert len(row["prompt_ids"]) + len(row["rejected_ids"]) <= 40
    seq_len = 80 if layout == "shared_prompt" else 40
    it = PairIterator(ds, global_batch=4, micro_batches=2, layout=layout, seq_len=seq_len, seed=0)
    indices = it.next_indices()
    batch = it.build(indices)
    np.testing.assert_array_equal(batch["pair_label"], np.asarray(ds["label"], np.float32)[indices.reshape(2, 2)])
    plain = PairIterator(pairs_tokens(pairs, tokenizer), global_batch=4, layout=layout, seq_len=seq_len, seed=0)
    assert "pair_label" not in plain.build(plain.next_indices())


def pairs_tokens(pairs, tokenizer):
    from lnpo.data import tokenize_preferences

    return tokenize_preferences(pairs, tokenizer, max_len=40, max_prompt_len=24)[0]
