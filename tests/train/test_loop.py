"""The loop's resume contract, on a toy state: restore into the caller's structure, one state at a time."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnpo.train.loop import LoopSpec, delete_arrays, fit
from lnpo.train.steps import TrainState


def _state(seed: int) -> TrainState:
    rng = np.random.default_rng(seed)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32), "b": jnp.asarray(rng.normal(size=3), jnp.float32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state={"m": jax.tree.map(jnp.zeros_like, params)})


@jax.jit
def _step(state: TrainState, batch: dict):
    """A deterministic update that depends on the batch, the params and the moments."""
    m = jax.tree.map(lambda m, p: 0.9 * m + batch["x"] * p, state.opt_state["m"], state.params)
    params = jax.tree.map(lambda p, m: p - 0.1 * m, state.params, m)
    loss = sum(jnp.sum(p ** 2) for p in jax.tree.leaves(params))
    return TrainState(step=state.step + 1, params=params, opt_state={"m": m}), {"loss": loss, "finite": 1.0}


def _spec(total_steps: int, checkpoint_every: int) -> LoopSpec:
    position = {"next": 0}

    def batches():
        while True:
            i = position["next"]
            position["next"] += 1
            yield {"x": jnp.float32(1.0 + 0.5 * i)}, 1.0

    return LoopSpec(
        step_fn=_step, batches=batches(), iterator_state=lambda: dict(position),
        restore_iterator=position.update, held_out_loss=None, total_steps=total_steps, log_every=1,
        eval_every=10**9, checkpoint_every=checkpoint_every, keep_checkpoints=3, flops_per_token=1.0, peak_flops=1.0,
        learning_rate=lambda s: 0.1, items_per_step=1)


def test_delete_arrays_frees_every_array_leaf():
    state = _state(0)
    delete_arrays(state)
    assert all(x.is_deleted() for x in jax.tree.leaves(state))
    delete_arrays(state)  # twice is harmless
    with pytest.raises(RuntimeError):
        np.asarray(state.params["w"])


def test_resume_frees_the_fresh_state_and_continues_like_an_uninterrupted_run(tmp_path):
    straight = fit(_state(0), _spec(total_steps=5, checkpoint_every=100), workdir=str(tmp_path / "straight"))

    workdir = str(tmp_path / "resumed")
    first = fit(_state(0), _spec(total_steps=3, checkpoint_every=3), workdir=workdir)
    assert first.step == 3
    fresh = _state(1)  # different values: only its structure may matter on a resume
    resumed = fit(fresh, _spec(total_steps=5, checkpoint_every=100), workdir=workdir)

    assert all(x.is_deleted() for x in jax.tree.leaves(fresh))  # freed before the checkpoint was read
    assert resumed.step == straight.step == 5
    for got, want in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(straight.state), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert resumed.last_metrics["loss"] == straight.last_metrics["loss"]
