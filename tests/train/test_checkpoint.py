"""Checkpoints: a damaged newest checkpoint falls back to the newest one that restores and verifies;
none restoring is one CheckpointError line naming the directory; a failed save stops at once."""

from __future__ import annotations

import errno
import glob
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnpo.errors import CheckpointError
from lnpo.train import checksum
from lnpo.train.checkpoint import Checkpointer, abstract_like


def _state(step: int) -> dict:
    rng = np.random.default_rng(step)
    return {"w": jnp.asarray(rng.normal(size=(128, 256)), jnp.float32),  # big enough for its own data file
            "b": jnp.asarray(rng.normal(size=7), jnp.bfloat16), "step": jnp.int32(step)}


def _save(directory: str, steps=(1, 2)) -> None:
    checkpointer = Checkpointer(directory, keep=5)
    for step in steps:
        checkpointer.save(step, _state(step), {"position": step})
    checkpointer.close()


def _array_file(step_dir: str) -> str:
    """The largest file of the step's state item: the big array's data."""
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate(step_dir):
    path = _array_file(step_dir)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _delete_array(step_dir):
    os.remove(_array_file(step_dir))


def _delete_metadata(step_dir):
    for name in ("_CHECKPOINT_METADATA", "state/_METADATA", "state/manifest.ocdbt"):
        os.remove(os.path.join(step_dir, name))


def _delete_checksums(step_dir):
    shutil.rmtree(os.path.join(step_dir, "checksums"))


def _flip_bytes(step_dir):
    path = _array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    for i in (len(data) // 3, len(data) // 2):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


def _empty_dir(step_dir):
    shutil.rmtree(step_dir)
    os.makedirs(step_dir)


def _garbage(step_dir):
    path = _array_file(step_dir)
    size = os.path.getsize(path)
    open(path, "wb").write(np.random.default_rng(0).bytes(size))


DAMAGE = {"truncated array file": _truncate, "deleted array file": _delete_array, "deleted metadata": _delete_metadata,
          "deleted checksum record": _delete_checksums,
          "flipped bytes": _flip_bytes, "empty directory": _empty_dir, "garbage array file": _garbage}


def _restore_latest(directory: str):
    checkpointer = Checkpointer(directory, keep=5)
    try:
        return checkpointer.restore_latest(abstract_like(_state(0)))
    finally:
        checkpointer.close()


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, capsys, kind):
    directory = str(tmp_path / "checkpoints")
    _save(directory)
    DAMAGE[kind](os.path.join(directory, "2"))

    step, state, data = _restore_latest(directory)

    assert (step, data) == (1, {"position": 1})
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(_state(1)), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    lines = [line for line in capsys.readouterr().out.splitlines() if "damaged" in line]
    assert len(lines) == 1 and os.path.join(directory, "2") in lines[0]  # the skipped one, named in one line
    assert os.path.isdir(os.path.join(f"{directory}.damaged", "2"))  # set aside, not deleted


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_no_checkpoint_restoring_is_one_line_naming_the_directory(tmp_path, kind):
    directory = str(tmp_path / "checkpoints")
    _save(directory)
    for step in ("1", "2"):
        DAMAGE[kind](os.path.join(directory, step))

    with pytest.raises(CheckpointError) as info:
        _restore_latest(directory)

    message = str(info.value)
    assert "\n" not in message and directory in message and "2 tried" in message


def test_after_a_fallback_the_same_step_can_be_saved_again(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _save(directory)
    _flip_bytes(os.path.join(directory, "2"))
    assert _restore_latest(directory)[0] == 1
    _save(directory, steps=(2,))
    step, state, _ = _restore_latest(directory)
    assert step == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.asarray(_state(2)["w"]))


def test_a_stray_file_named_like_a_step_is_never_restored(tmp_path):
    directory = str(tmp_path / "checkpoints")
    _save(directory)
    open(os.path.join(directory, "3"), "wb").write(b"not a checkpoint")
    assert _restore_latest(directory)[0] == 2


def test_checksums_change_under_any_single_flipped_bit_and_not_with_the_sharding():
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    base = checksum.tree_checksums({"x": jnp.asarray(x)})["['x']"]
    words = x.view(np.uint32)
    for position in range(words.size):
        for bit in (0, 13, 31):
            flipped = words.copy().reshape(-1)
            flipped[position] ^= np.uint32(1 << bit)
            got = checksum.tree_checksums({"x": jnp.asarray(flipped.view(np.float32).reshape(x.shape))})["['x']"]
            assert got != base
    swapped = x[::-1].copy()  # same values, another order
    assert checksum.tree_checksums({"x": jnp.asarray(swapped)})["['x']"] != base


def test_a_failed_save_stops_at_the_next_check_in_one_line_and_keeps_the_previous(tmp_path, monkeypatch):
    from orbax.checkpoint._src.serialization import ocdbt_utils

    directory = str(tmp_path / "checkpoints")
    checkpointer = Checkpointer(directory, keep=5)
    checkpointer.save(1, _state(1), {"position": 1})
    checkpointer.wait()

    async def disk_full(*args, **kwargs):  # what tensorstore raises in orbax's background commit on a full disk
        raise ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{directory}/2.orbax-checkpoint-tmp/state/'
                         'manifest.ocdbt": Failed to write 115 bytes to file 7: No space left on device')

    monkeypatch.setattr(ocdbt_utils, "merge_ocdbt_per_process_files", disk_full)
    checkpointer.save(2, _state(2), {"position": 2})  # asynchronous: returns before the commit fails
    with pytest.raises(CheckpointError) as info:
        checkpointer.wait()
        checkpointer.check()
    monkeypatch.undo()
    checkpointer.close()
    message = str(info.value)
    assert "\n" not in message and "no space left on device" in message and "step 1 is kept" in message
    assert _restore_latest(directory)[0] == 1


def test_the_loop_stops_at_the_first_failed_save(tmp_path, monkeypatch):
    """The loop checks the asynchronous save at every step boundary: no further steps, no further saves."""
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from test_loop import _spec
    from test_loop import _state as loop_state

    from lnpo.train import checkpoint as checkpoint_mod
    from lnpo.train.loop import fit

    saved = []
    original = checkpoint_mod.Checkpointer.save

    def save(self, step, *args, **kwargs):
        saved.append(step)
        if step == 2:
            self._pending, self._manager.check_for_errors = step, _raise_enospc
            return
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod.Checkpointer, "save", save)
    with pytest.raises(CheckpointError, match="step 2 .*no space left on device.*step 1 is kept"):
        fit(loop_state(0), _spec(total_steps=6, checkpoint_every=1), workdir=str(tmp_path))
    assert saved == [1, 2]


def _raise_enospc():
    raise OSError(errno.ENOSPC, "No space left on device")
