"""Batch layouts: exact arrays on small cases, and model-free equivalence of the three layouts.

The equivalence check applies the attention rule of docs/architecture.md to the
row arrays: for every target, the (position, token) pairs it can attend to and
the token it predicts must be the same in every layout. A decoder whose output
at a token depends only on those (RoPE positions, causal / segment / branch
mask) then gives identical per-sequence log-prob sums; test_logprob_equivalence.py
checks that with a real model.
"""

from __future__ import annotations

import numpy as np
import pytest

from lnpo.data.layouts import LAYOUTS, ROW_KEYS, layout_pairs, layout_sft, plan_rows, unit_lengths


def pair(prompt, chosen, rejected):
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def test_padded_exact():
    rows = layout_pairs([pair([11, 12, 13], [21, 22], [31])], "padded", 6)
    assert {k: v.dtype for k, v in rows.items()} == {k: np.int32 for k in ROW_KEYS}
    np.testing.assert_array_equal(rows["input_ids"], [[11, 12, 13, 21, 22, 0], [11, 12, 13, 31, 0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["branch_ids"], np.zeros((2, 6)))
    np.testing.assert_array_equal(rows["targets"], [[12, 13, 21, 22, 0, 0], [12, 13, 31, 0, 0, 0]])
    np.testing.assert_array_equal(rows["seq_index"], [[-1, -1, 0, 0, -1, -1], [-1, -1, 1, -1, -1, -1]])


def test_shared_prompt_exact():
    rows = layout_pairs([pair([11, 12, 13], [21, 22], [31])], "shared_prompt", 9)
    #           prefix  | branch 1: last prompt token + chosen | branch 2: last prompt token + rejected | pad
    np.testing.assert_array_equal(rows["input_ids"], [[11, 12, 13, 21, 22, 13, 31, 0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 4, 2, 3, 0, 0]])
    np.testing.assert_array_equal(rows["branch_ids"], [[0, 0, 1, 1, 1, 2, 2, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["targets"], [[12, 13, 21, 22, 0, 31, 0, 0, 0]])
    np.testing.assert_array_equal(rows["seq_index"], [[-1, -1, 0, 0, -1, 1, -1, -1, -1]])
    # a one-token prompt has an empty shared prefix
    rows = layout_pairs([pair([11], [21], [31, 32])], "shared_prompt", 5)
    np.testing.assert_array_equal(rows["input_ids"], [[11, 21, 11, 31, 32]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 0, 1, 2]])
    np.testing.assert_array_equal(rows["seq_index"], [[0, -1, 1, 1, -1]])


def test_packed_exact_and_offsets():
    examples = [pair([11, 12], [21], [31, 32]), pair([13], [22, 23], [33])]
    rows = layout_pairs(examples, "packed", 5, seq_offset=4)
    # units (3, 4, 3, 2 tokens), first-fit decreasing into rows of 5:
    # row 0: pair0.rejected (4); row 1: pair0.chosen (3) + pair1.rejected (2); row 2: pair1.chosen (3)
    np.testing.assert_array_equal(rows["input_ids"], [[11, 12, 31, 32, 0], [11, 12, 21, 13, 33], [13, 22, 23, 0, 0]])
    np.testing.assert_array_equal(rows["segment_ids"], [[1, 1, 1, 1, 0], [1, 1, 1, 2, 2], [1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(rows["positions"], [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1], [0, 1, 2, 0, 0]])
    np.testing.assert_array_equal(rows["seq_index"], [[-1, 5, 5, -1, -1], [-1, 4, -1, 7, -1], [6, 6, -1, -1, -1]])
    np.testing.assert_array_equal(rows["targets"], [[12, 31, 32, 0, 0], [12, 21, 0, 33, 0], [22, 23, 0, 0, 0]])


def test_num_rows_and_errors():
    ex = [pair([1, 2], [3], [4])]
    rows = layout_pairs(ex, "packed", 8, num_rows=4)
    assert rows["input_ids"].shape == (4, 8)
    assert (rows["segment_ids"][1:] == 0).all() and (rows["seq_index"][1:] == -1).all()
    with pytest.raises(ValueError, match="needs 2 rows"):
        layout_pairs(ex, "padded", 8, num_rows=1)
    with pytest.raises(ValueError, match="does not fit in seq_len 2"):
        layout_pairs(ex, "padded", 2)
    with pytest.raises(ValueError, match="does not fit"):
        layout_pairs(ex, "shared_prompt", 4)  # needs 2 + 1 + 1 + 1 = 5
    with pytest.raises(ValueError, match="unknown layout"):
        layout_pairs(ex, "zigzag", 8)
    with pytest.raises(ValueError, match="shared_prompt"):
        layout_sft([{"prompt_ids": [1], "completion_ids": [2]}], "shared_prompt", 8)
    with pytest.raises(ValueError, match="empty"):
        layout_pairs([pair([], [3], [4])], "padded", 8)


def test_plan_rows_first_fit_decreasing():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lengths = rng.integers(1, 17, size=rng.integers(1, 40))
        plan = plan_rows(lengths, 16, "packed")
        used = np.zeros(plan.num_rows, int)
        for r, _, n in zip(plan.row, plan.offset, lengths):
            used[r] += n
        assert (used <= 16).all() and (used > 0).all()
        # units of a row are contiguous and non-overlapping; segments count 1.. left to right
        for r in range(plan.num_rows):
            members = np.flatnonzero(plan.row == r)
            order = members[np.argsort(plan.offset[members])]
            ends = plan.offset[order] + lengths[order]
            assert plan.offset[order][0] == 0 and (plan.offset[order][1:] == ends[:-1]).all()
            assert list(plan.segment[order]) == list(range(1, len(order) + 1))
        # never worse than the trivial bound; a lower bound is the total volume
        assert int(np.ceil(lengths.sum() / 16)) <= plan.num_rows <= len(lengths)
    assert plan_rows([3, 3, 3], 16, "padded").num_rows == 3


def test_unit_lengths():
    p, c, r = np.array([3, 1]), np.array([2, 2]), np.array([1, 5])
    np.testing.assert_array_equal(unit_lengths(p, (c, r), "padded"), [5, 4, 3, 6])
    np.testing.assert_array_equal(unit_lengths(p, (c, r), "packed"), [5, 4, 3, 6])
    np.testing.assert_array_equal(unit_lengths(p, (c, r), "shared_prompt"), [7, 9])
    np.testing.assert_array_equal(unit_lengths(p, (c,), "packed"), [5, 3])


def visible_targets(rows) -> dict[int, list]:
    """seq -> sorted [(query position, ((pos, token) visible...), target)] under the architecture's mask."""
    out: dict[int, list] = {}
    R, T = rows["input_ids"].shape
    for r in range(R):
        seg, br = rows["segment_ids"][r], rows["branch_ids"][r]
        for q in range(T):
            s = int(rows["seq_index"][r, q])
            if s < 0:
                continue
            k = np.arange(q + 1)
            ok = (seg[k] == seg[q]) & (seg[q] != 0) & ((br[k] == 0) | (br[k] == br[q]))
            ctx = tuple(sorted(zip(rows["positions"][r, k[ok]].tolist(), rows["input_ids"][r, k[ok]].tolist())))
            out.setdefault(s, []).append((int(rows["positions"][r, q]), ctx, int(rows["targets"][r, q])))
    return {s: sorted(v) for s, v in out.items()}


def random_pairs(rng, n, max_prompt=6, max_completion=5, vocab=50):
    return [pair(rng.integers(1, vocab, rng.integers(1, max_prompt + 1)).tolist(),
                 rng.integers(1, vocab, rng.integers(1, max_completion + 1)).tolist(),
                 rng.integers(1, vocab, rng.integers(1, max_completion + 1)).tolist()) for _ in range(n)]


def test_layouts_equivalent_under_attention_rule():
    rng = np.random.default_rng(1)
    for trial in range(20):
        examples = random_pairs(rng, int(rng.integers(1, 7)))
        seq_len = 20
        results = {layout: layout_pairs(examples, layout, seq_len, seq_offset=2 * trial) for layout in LAYOUTS}
        reference = visible_targets(results["padded"])
        # every sequence has exactly len(completion) targets, each predicting its completion in order
        for i, ex in enumerate(examples):
            for j, key in enumerate(("chosen_ids", "rejected_ids")):
                got = reference[2 * trial + 2 * i + j]
                assert [t for _, _, t in got] == ex[key]
        for layout in ("packed", "shared_prompt"):
            assert visible_targets(results[layout]) == reference, layout
        assert results["packed"]["input_ids"].shape[0] <= results["padded"]["input_ids"].shape[0]


def test_sft_layouts():
    rng = np.random.default_rng(2)
    examples = [{"prompt_ids": p["prompt_ids"], "completion_ids": p["chosen_ids"]} for p in random_pairs(rng, 5)]
    padded = layout_sft(examples, "padded", 16, seq_offset=3)
    packed = layout_sft(examples, "packed", 16, seq_offset=3)
    assert padded["input_ids"].shape == (5, 16)
    reference = visible_targets(padded)
    assert sorted(reference) == [3, 4, 5, 6, 7]
    for i, ex in enumerate(examples):
        assert [t for _, _, t in reference[3 + i]] == ex["completion_ids"]
    assert visible_targets(packed) == reference


@pytest.mark.parametrize("max_rows,multiple", [(1, 1), (2, 1), (7, 1), (16, 1), (16, 2), (12, 4), (100, 1), (3, 2)])
def test_row_buckets_cover_every_row_count_within_one_and_a_half(max_rows, multiple):
    from lnpo.data.layouts import bucket_rows, round_up, row_buckets

    buckets = row_buckets(max_rows, multiple)
    assert list(buckets) == sorted(set(buckets)) and all(b % multiple == 0 for b in buckets)
    assert buckets[-1] == round_up(max_rows, multiple)
    assert len(buckets) <= 2 * np.log2(max(max_rows, 2)) + 1
    for need in range(1, buckets[-1] + 1):
        got = bucket_rows(need, buckets)
        smallest = min(b for b in buckets if b >= need)  # brute force
        assert got == smallest and (got < 1.5 * need or got <= multiple or got == 2 * multiple)
    with pytest.raises(ValueError, match="largest row bucket"):
        bucket_rows(buckets[-1] + 1, buckets)
