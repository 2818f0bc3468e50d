"""The reference cache: a cache that cannot be trusted is recomputed (one line), never used; the weights
fingerprint follows the weights' content and is memoized outside the (read-only) model directory."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lnpo.train import reference_cache as rc

KEY = "0123456789abcdef01234567"


def _arrays(n: int = 16):
    rng = np.random.default_rng(0)
    return rng.normal(-40, 5, n).astype(np.float32), rng.normal(-45, 5, n).astype(np.float32)


def _rewrite(path: str, **arrays) -> None:
    """Rewrite the npz keeping its stored checksum: what a bug or a hand edit would leave."""
    with np.load(path, allow_pickle=False) as f:
        content = {k: f[k] for k in f.files}
    content.update(arrays)
    tmp = path + ".edit.npz"
    np.savez(tmp, **content)
    os.replace(tmp, path)


def _scale(path, chosen, rejected):
    _rewrite(path, chosen=chosen * np.float32(1.01))


def _swap(path, chosen, rejected):
    _rewrite(path, chosen=rejected, rejected=chosen)


def _truncate(path, chosen, rejected):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _empty(path, chosen, rejected):
    open(path, "wb").close()


def _no_checksum(path, chosen, rejected):
    np.savez(path.removesuffix(".npz") + ".old.npz", chosen=chosen, rejected=rejected)
    os.replace(path.removesuffix(".npz") + ".old.npz", path)


def _copied_from_another_key(path, chosen, rejected):
    other = rc.save(os.path.dirname(path), "f" * 24, chosen[::-1].copy(), rejected[::-1].copy())
    os.replace(other, path)


TAMPERING = {"values x1.01": _scale, "chosen and rejected swapped": _swap, "truncated": _truncate, "empty": _empty,
             "written without a checksum": _no_checksum, "copied from another key": _copied_from_another_key}


def test_a_saved_cache_loads_back_exactly(tmp_path):
    chosen, rejected = _arrays()
    rc.save(str(tmp_path), KEY, chosen, rejected)
    got = rc.load(str(tmp_path), KEY, len(chosen))
    np.testing.assert_array_equal(got[0], chosen)
    np.testing.assert_array_equal(got[1], rejected)


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_an_untrustworthy_cache_is_recomputed_with_one_line(tmp_path, capsys, kind):
    chosen, rejected = _arrays()
    path = rc.save(str(tmp_path), KEY, chosen, rejected)
    TAMPERING[kind](path, chosen, rejected)

    assert rc.load(str(tmp_path), KEY, len(chosen)) is None
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and "recomputing" in lines[0]

    calls = []
    fresh = lambda: (calls.append(1), (chosen + 1, rejected + 1))[1]  # noqa: E731
    got_chosen, _, computed = rc.load_or_compute(str(tmp_path), KEY, len(chosen), fresh)
    assert computed and calls == [1]
    np.testing.assert_array_equal(got_chosen, chosen + 1)
    np.testing.assert_array_equal(rc.load(str(tmp_path), KEY, len(chosen))[0], chosen + 1)  # rewritten, verified


def test_a_cache_for_another_number_of_pairs_is_recomputed(tmp_path, capsys):
    chosen, rejected = _arrays()
    rc.save(str(tmp_path), KEY, chosen, rejected)
    assert rc.load(str(tmp_path), KEY, len(chosen) + 1) is None
    assert "recomputing" in capsys.readouterr().out


def _model_dir(tmp_path) -> str:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "model.safetensors").write_bytes(b"A" * 4096)
    return str(model)


def test_replaced_weights_with_size_and_mtime_preserved_change_the_fingerprint(tmp_path):
    model, memo = _model_dir(tmp_path), str(tmp_path / "cache")
    before = rc.weights_fingerprint(model, memo)
    weights = os.path.join(model, "model.safetensors")
    stat = os.stat(weights)
    with open(weights, "r+b") as f:  # same inode, same size
        f.write(b"B" * 4096)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime set back
    assert os.stat(weights).st_size == stat.st_size and os.stat(weights).st_mtime_ns == stat.st_mtime_ns
    assert rc.weights_fingerprint(model, memo) != before


def test_the_fingerprint_is_memoized_outside_the_model_directory(tmp_path, monkeypatch):
    model, memo = _model_dir(tmp_path), str(tmp_path / "cache")
    listing = sorted(os.listdir(model))
    first = rc.weights_fingerprint(model, memo)
    assert sorted(os.listdir(model)) == listing  # an input directory is never written
    assert os.listdir(memo) == [rc.MEMO_NAME]

    monkeypatch.setattr(rc, "file_sha256", lambda path: pytest.fail(f"{path} was hashed again"))
    assert rc.weights_fingerprint(model, memo) == first  # unchanged files: read from the memo


def test_the_fingerprint_is_the_same_with_or_without_a_memo(tmp_path):
    model = _model_dir(tmp_path)
    assert rc.weights_fingerprint(model, str(tmp_path / "a")) == rc.weights_fingerprint(model, str(tmp_path / "b"))
