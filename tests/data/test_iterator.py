"""Iterators: deterministic shuffling, exact resume, micro-batches, per-host shards, eval padding."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest

from lnpo.data import EvalIterator, PairIterator, SFTIterator
from lnpo.data.layouts import ROW_KEYS

MARK = 1000  # chosen_ids[0] = MARK + 2*i, rejected_ids[0] = MARK + 2*i + 1: the targets identify the pair


def synthetic_pairs(n, seed=0, max_prompt=6, max_completion=6):
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "prompt_len", "chosen_len", "rejected_len")}
    for i in range(n):
        p = rng.integers(1, 100, rng.integers(1, max_prompt + 1)).tolist()
        c = [MARK + 2 * i] + rng.integers(1, 100, rng.integers(0, max_completion)).tolist()
        r = [MARK + 2 * i + 1] + rng.integers(1, 100, rng.integers(0, max_completion)).tolist()
        for key, ids in (("prompt", p), ("chosen", c), ("rejected", r)):
            cols[f"{key}_ids"].append(ids)
            cols[f"{key}_len"].append(len(ids))
    return datasets.Dataset.from_dict(cols)


def seq_targets(rows: dict) -> dict[int, list[int]]:
    """seq -> its target tokens in row order, for one micro-batch's rows ``[R, T]``."""
    out: dict[int, list[int]] = {}
    for r, q in zip(*np.nonzero(rows["seq_index"] >= 0)):
        out.setdefault(int(rows["seq_index"][r, q]), []).append(int(rows["targets"][r, q]))
    return out


def pairs_of(rows: dict) -> dict[int, int]:
    """seq -> the dataset pair it belongs to (from the marker token), checking chosen/rejected parity."""
    out = {}
    for s, targets in seq_targets(rows).items():
        if targets[0] >= MARK:
            assert (targets[0] - MARK) % 2 == s % 2  # chosen is even, rejected odd
            out[s] = (targets[0] - MARK) // 2
    return out


def micro(batch, m):
    return {k: batch[k][m] for k in ROW_KEYS}


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize("layout", ["padded", "packed", "shared_prompt"])
def test_batch_structure(layout):
    ds = synthetic_pairs(40)
    it = PairIterator(ds, global_batch=8, micro_batches=2, layout=layout, seq_len=32, seed=3, row_multiple=4)
    perm = np.random.default_rng([3, 0]).permutation(40)
    for step in range(3):
        batch = next(it)
        assert set(batch) == set(ROW_KEYS) | {"example_valid"}
        A, R, T = batch["input_ids"].shape
        assert (A, T) == (2, 32) and R % 4 == 0
        assert all(batch[k].dtype == np.int32 and batch[k].shape == (A, R, T) for k in ROW_KEYS)
        assert batch["example_valid"].dtype == np.float32 and (batch["example_valid"] == 1).all()
        assert batch["example_valid"].shape == (2, 4)
        for m in range(2):
            mapping = pairs_of(micro(batch, m))
            assert sorted(mapping) == list(range(8))  # each micro-batch numbers its sequences from 0
            expected = perm[step * 8 + m * 4: step * 8 + (m + 1) * 4]
            assert [mapping[2 * j] for j in range(4)] == list(expected)
            assert [mapping[2 * j + 1] for j in range(4)] == list(expected)
            # each sequence has exactly its completion's tokens as targets
            targets = seq_targets(micro(batch, m))
            for j, i in enumerate(expected):
                assert targets[2 * j] == ds[int(i)]["chosen_ids"]
                assert targets[2 * j + 1] == ds[int(i)]["rejected_ids"]


def test_shuffling_deterministic_by_seed_and_epoch():
    ds = synthetic_pairs(20)
    a = PairIterator(ds, global_batch=5, seq_len=32, seed=7)
    b = PairIterator(ds, global_batch=5, seq_len=32, seed=7)
    c = PairIterator(ds, global_batch=5, seq_len=32, seed=8)
    ia = np.concatenate([a.next_indices() for _ in range(8)])
    ib = np.concatenate([b.next_indices() for _ in range(8)])
    ic = np.concatenate([c.next_indices() for _ in range(8)])
    np.testing.assert_array_equal(ia, ib)
    assert not np.array_equal(ia, ic)
    epoch0, epoch1 = ia[:20], ia[20:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(20))  # every example once per epoch
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch


def test_drop_remainder_modes():
    ds = synthetic_pairs(10)
    it = PairIterator(ds, global_batch=4, seq_len=32, seed=0, drop_remainder=True)
    assert it.steps_per_epoch == 2
    batches = [it.next_indices() for _ in range(4)]
    for e in range(2):  # two batches per epoch from that epoch's permutation, the last 2 examples skipped
        perm = np.random.default_rng([0, e]).permutation(10)
        np.testing.assert_array_equal(np.concatenate(batches[2 * e: 2 * e + 2]), perm[:8])
    it = PairIterator(ds, global_batch=4, seq_len=32, seed=0, drop_remainder=False)
    stream = np.concatenate([it.next_indices() for _ in range(5)])  # 20 = two whole epochs
    expected = np.concatenate([np.random.default_rng([0, e]).permutation(10) for e in range(2)])
    np.testing.assert_array_equal(stream, expected)


def test_num_epochs_and_partial_last_batch():
    ds = synthetic_pairs(10)
    it = PairIterator(ds, global_batch=4, seq_len=32, drop_remainder=False, num_epochs=1, layout="packed")
    batches = list(it)
    assert len(batches) == 3
    np.testing.assert_array_equal(batches[-1]["example_valid"], [[1, 1, 0, 0]])
    seen = [i for b in batches for s, i in pairs_of(micro(b, 0)).items() if s % 2 == 0]
    assert sorted(seen) == list(range(10))
    it = PairIterator(ds, global_batch=4, seq_len=32, drop_remainder=True, num_epochs=2)
    assert len(list(it)) == 4
    with pytest.raises(StopIteration):
        next(it)


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("layout", ["padded", "packed", "shared_prompt"])
def test_exact_resume_after_save_restore(layout, drop_remainder):
    ds = synthetic_pairs(26, seed=1)
    kwargs = dict(global_batch=6, micro_batches=2, layout=layout, seq_len=32, seed=11, drop_remainder=drop_remainder)
    for consumed in (0, 3, 4, 9):  # 26 // 6 = 4 batches per epoch: cuts inside and at epoch ends
        it = PairIterator(ds, **kwargs)
        for _ in range(consumed):
            next(it)
        state = json.loads(json.dumps(it.state()))  # as saved with a checkpoint
        expected = [next(it) for _ in range(5)]
        resumed = PairIterator(ds, **kwargs, state=state)
        for want in expected:
            assert_batches_equal(next(resumed), want)
        other = PairIterator(ds, **kwargs)
        other.restore(state)
        assert_batches_equal(next(other), expected[0])
    assert state["step"] == 9 and set(state) >= {"epoch", "offset", "seed", "num_examples"}


def test_restore_rejects_other_data_or_seed():
    ds = synthetic_pairs(12)
    state = PairIterator(ds, global_batch=4, seq_len=32, seed=1).state()
    with pytest.raises(ValueError, match="cannot resume exactly"):
        PairIterator(ds, global_batch=4, seq_len=32, seed=2, state=state)
    with pytest.raises(ValueError, match="cannot resume exactly"):
        PairIterator(synthetic_pairs(13), global_batch=4, seq_len=32, seed=1, state=state)


@pytest.mark.parametrize("layout", ["padded", "packed", "shared_prompt"])
@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_partition_the_global_batch(layout, hosts):
    ds = synthetic_pairs(64, seed=2)
    common = dict(global_batch=16, micro_batches=2, layout=layout, seq_len=24, seed=5, row_multiple=2)
    single = PairIterator(ds, **common)
    per_host = [PairIterator(ds, **common, process_index=h, process_count=hosts) for h in range(hosts)]
    local = 16 // 2 // hosts
    for _ in range(6):  # crosses the epoch boundary (4 steps per epoch)
        want = next(single)
        got = [next(it) for it in per_host]
        rows = {b["input_ids"].shape[1] for b in got}
        assert len(rows) == 1 and rows.pop() % 2 == 0  # the same R on every host
        for b in got:
            assert b["example_valid"].shape == (2, local)
        for m in range(2):
            host_pairs = [pairs_of(micro(b, m)) for b in got]
            # host h holds sequences 2*h*local ... 2*(h+1)*local - 1 of the micro-batch
            for h, mapping in enumerate(host_pairs):
                assert sorted(mapping) == list(range(2 * h * local, 2 * (h + 1) * local))
            ids = [i for mapping in host_pairs for s, i in mapping.items() if s % 2 == 0]
            assert len(ids) == len(set(ids)) == 8  # no overlap, no loss
            # assembled along the row axis (jax.make_array_from_process_local_data), the global
            # micro-batch numbers every sequence exactly as the single-host batch does
            assembled = {k: np.concatenate([b[k][m] for b in got], axis=0) for k in ROW_KEYS}
            assert seq_targets(assembled) == seq_targets(micro(want, m))
            assert pairs_of(assembled) == pairs_of(micro(want, m))


def test_eval_iterator_pads_last_batch():
    ds = synthetic_pairs(10)
    for hosts in (1, 2):
        iters = [EvalIterator(ds, global_batch=4, layout="packed", seq_len=32, process_index=h, process_count=hosts)
                 for h in range(hosts)]
        assert len(iters[0]) == 3
        seen = []
        for batches in zip(*iters):
            for b in batches:
                mapping = pairs_of(micro(b, 0))
                valid = b["example_valid"][0]
                targets = seq_targets(micro(b, 0))
                offset = min(targets)  # this host's first sequence
                for j, v in enumerate(valid):
                    if v:
                        seen.append(mapping[offset + 2 * j])
                    else:  # a dummy pair: one-token sequences, so counts are never 0
                        assert targets[offset + 2 * j] == [0] and targets[offset + 2 * j + 1] == [0]
        assert seen == list(range(10))  # in order, once
    assert len(list(iters[0])) == 3  # re-iterable
    assert len(EvalIterator(ds, global_batch=4, seq_len=32, max_batches=2)) == 2


def test_sft_iterator():
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 50, rng.integers(1, 5)).tolist() for _ in range(12)]
    completions = [[MARK + 2 * i] + rng.integers(1, 50, rng.integers(0, 4)).tolist() for i in range(12)]
    ds = datasets.Dataset.from_dict({"prompt_ids": prompts, "completion_ids": completions})
    it = SFTIterator(ds, global_batch=4, micro_batches=2, layout="packed", seq_len=16, seed=0)
    batch = next(it)
    perm = np.random.default_rng([0, 0]).permutation(12)
    for m in range(2):
        targets = seq_targets(micro(batch, m))
        assert sorted(targets) == [0, 1]
        assert [targets[j] for j in range(2)] == [completions[i] for i in perm[m * 2: m * 2 + 2]]
    with pytest.raises(ValueError, match="needs a tokenized pairs dataset"):
        PairIterator(ds, global_batch=4, seq_len=16)
    with pytest.raises(ValueError, match="shared_prompt"):
        SFTIterator(ds, global_batch=4, seq_len=16, layout="shared_prompt")


def test_end_to_end_from_file(fixtures, cache_dir, tokenizer):
    """load -> tokenize -> iterator: every kept pair of the file reaches the batches intact."""
    from lnpo.data import load_preferences, tokenize_preferences

    ds, _ = load_preferences(fixtures["conversational"].path, cache_dir=cache_dir)
    tok, _ = tokenize_preferences(ds, tokenizer, max_len=40, max_prompt_len=24)
    batches = list(EvalIterator(tok, global_batch=2, layout="packed", seq_len=40))
    got = []
    for b in batches:
        targets = seq_targets(micro(b, 0))
        got += [(targets[2 * j], targets[2 * j + 1]) for j in range(2) if b["example_valid"][0, j]]
    assert got == [(row["chosen_ids"], row["rejected_ids"]) for row in tok]
    it = PairIterator(tok, global_batch=2, layout="shared_prompt", seq_len=80, seed=0)
    assert next(it)["input_ids"].shape[:2] == (1, 1)


def test_configuration_errors():
    ds = synthetic_pairs(8, max_prompt=6, max_completion=6)
    with pytest.raises(ValueError, match="seq_len=8"):
        PairIterator(ds, global_batch=4, seq_len=8, layout="shared_prompt")
    with pytest.raises(ValueError, match="equal parts"):
        PairIterator(ds, global_batch=6, micro_batches=4, seq_len=32)
    with pytest.raises(ValueError, match="equal parts"):
        PairIterator(ds, global_batch=4, process_count=3, process_index=0, seq_len=32)
    with pytest.raises(ValueError, match="global_batch"):
        PairIterator(ds, global_batch=16, seq_len=32)
    with pytest.raises(ValueError, match="not a tokenized dataset"):
        PairIterator(datasets.Dataset.from_dict({"x": [1]}), global_batch=1, seq_len=8)


@pytest.mark.parametrize("layout", ["packed", "shared_prompt"])
def test_varied_packed_batches_compile_the_step_at_most_once_per_row_bucket(layout):
    import jax
    import jax.numpy as jnp

    from lnpo.data.layouts import plan_rows, unit_lengths

    ds = synthetic_pairs(400, seed=3, max_prompt=12, max_completion=12)
    it = PairIterator(ds, global_batch=16, layout=layout, seq_len=40, seed=1)
    traces = []

    @jax.jit
    def step(batch):
        traces.append(batch["input_ids"].shape)  # runs once per compilation
        return jnp.sum(batch["input_ids"] * (batch["segment_ids"] > 0))

    exact = set()
    for _ in range(25):
        indices = it.next_indices()
        rows = ds[indices.tolist()]
        lengths = unit_lengths([len(x) for x in rows["prompt_ids"]],
                               ([len(x) for x in rows["chosen_ids"]], [len(x) for x in rows["rejected_ids"]]), layout)
        need = plan_rows(lengths, 40, layout).num_rows
        exact.add(need)
        batch = it.build(indices)
        assert batch["input_ids"].shape[1] in it.row_buckets and batch["input_ids"].shape[1] >= need
        step({k: jnp.asarray(v) for k, v in batch.items()})
    assert len(exact) > len(traces)  # without buckets the step would have compiled once per exact row count
    assert len(traces) <= len(it.row_buckets)
