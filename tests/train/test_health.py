"""Vanishing gradients: a run whose gradient norm is exactly 0 while its loss is not 0 stops in one line."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from lnpo.train.health import ZERO_GRAD_PATIENCE, ZeroGradientWatch
from lnpo.train.loop import LoopSpec, NonFiniteLoss, VanishedGradients, fit
from lnpo.train.steps import TrainState


def test_zero_gradient_rule_fires_after_the_patience_and_only_away_from_loss_zero():
    watch = ZeroGradientWatch()
    assert all(watch.update(s, 0.69, 0.0) == "" for s in range(1, ZERO_GRAD_PATIENCE))
    assert "exactly 0 for 5 consecutive steps (1-5)" in watch.update(ZERO_GRAD_PATIENCE, 0.70, 0.0)
    watch = ZeroGradientWatch()
    for s, (loss, g) in enumerate([(0.7, 0.0)] * 4 + [(0.7, 1e-9)] + [(0.7, 0.0)] * 4, start=1):
        assert watch.update(s, loss, g) == ""  # a non-zero step resets the count
    watch = ZeroGradientWatch()
    assert all(watch.update(s, 0.0, 0.0) == "" for s in range(1, 20))  # at the minimum 0: converged, left alone
    assert all(watch.update(s, math.nan, 0.0) == "" for s in range(1, 20))  # NaN is the non-finite stop's


def _state():
    return TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)}, opt_state={})


def _spec(metrics_of_step, total_steps=30, checkpoint_every=1000):
    def batches():
        while True:
            yield {}, 1.0

    counter = {"step": 0}

    def step_fn(state, batch):
        counter["step"] += 1
        return state, metrics_of_step(counter["step"])

    return LoopSpec(step_fn=step_fn, batches=batches(), iterator_state=lambda: {}, restore_iterator=lambda d: None,
                    held_out_loss=None, total_steps=total_steps, log_every=1, eval_every=10**9,
                    checkpoint_every=checkpoint_every, keep_checkpoints=2, flops_per_token=1.0, peak_flops=1.0,
                    learning_rate=lambda s: 1e6, items_per_step=1)


def test_vanished_gradients_stop_the_run_in_one_line_before_the_end(tmp_path):
    # the lr=1e6 run: a finite loss near log 2, the gradient norm exactly 0 from step 2 on
    def metrics(s):
        return {"loss": 0.69 + 0.01 * (s % 3), "grad_norm": 0.5 if s == 1 else 0.0, "finite": 1.0}

    with pytest.raises(VanishedGradients) as e:
        fit(_state(), _spec(metrics), workdir=str(tmp_path / "run"))
    text = str(e.value)
    assert "\n" not in text and text.startswith("step 6: the gradient norm was exactly 0 for 5 consecutive steps (2-6)")
    assert text.endswith(f"no checkpoint was written yet in {tmp_path / 'run'}/checkpoints")


def test_non_finite_stop_without_a_checkpoint_does_not_claim_one_is_kept(tmp_path):
    def metrics(s):
        return {"loss": math.nan if s == 3 else 1.0, "grad_norm": 1.0, "finite": 0.0 if s == 3 else 1.0}

    with pytest.raises(NonFiniteLoss) as e:
        fit(_state(), _spec(metrics), workdir=str(tmp_path / "run"))
    assert "last good checkpoint" not in str(e.value) and "no checkpoint was written yet" in str(e.value)
    with pytest.raises(NonFiniteLoss, match=r"the last good checkpoint \(step 2\) in .* is kept$"):
        fit(_state(), _spec(metrics, checkpoint_every=2), workdir=str(tmp_path / "run2"))
