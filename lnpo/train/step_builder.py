"""The one builder of the jitted train step: the trainer and ``benchmarks/dpo_step.py`` both call it, so the
benchmark measures the trainer's own step.

``build_train_step(params, graphdef, tx, mesh, ...)`` returns a :class:`BuiltStep`: the initial
:class:`~lnpo.train.steps.TrainState` placed in its shardings (AdamW moments sharded like their parameters,
scalars replicated, every leaf on the mesh so the step compiles once per batch shape), those shardings, and
``jitted(state, batch, ref_params, hparams) -> (state, metrics)``: the pure
:func:`lnpo.train.steps.train_step` under the mesh's logical axis rules, jitted with explicit
``in_shardings`` (state, the batch split along rows by :data:`~lnpo.train.steps.BATCH_SPEC`, the reference's
own shardings, replicated hyperparameters), ``out_shardings`` (the state's, replicated metrics) and the state
donated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lnpo import parallel
from lnpo.train import steps
from lnpo.train.steps import BATCH_SPEC


@dataclasses.dataclass(frozen=True)
class BuiltStep:
    """The initial state (in ``state_shardings``), its shardings, and the jitted step."""

    state: steps.TrainState
    state_shardings: steps.TrainState
    jitted: Callable


def initial_state(params, tx: optax.GradientTransformation, mesh) -> tuple[steps.TrainState, steps.TrainState]:
    """``(state, shardings)``: step 0, ``params`` and ``tx.init(params)`` built in place with the optimizer's
    moments sharded like their parameters; scalars (step, counts) replicated on ``mesh``."""
    replicated = NamedSharding(mesh, P())
    param_shardings = jax.tree.map(lambda x: x.sharding, params)
    opt_shardings = optax.tree_map_params(tx, lambda _, sharding: sharding, jax.eval_shape(tx.init, params),
                                          param_shardings, transform_non_params=lambda _: replicated)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state)
    shardings = jax.tree.map(lambda x: x.sharding if isinstance(x.sharding, NamedSharding) else replicated, state)
    return jax.device_put(state, shardings), shardings


class WithFrozen:
    """A jitted ``(state, batch, ref_params, hparams, frozen)`` step called as ``(state, batch, ref_params,
    hparams)``: ``frozen`` (LoRA's base) is passed on every call as an argument (never a baked-in constant)."""

    def __init__(self, jitted, frozen):
        self.jitted, self.frozen = jitted, frozen

    def __call__(self, state, batch, ref_params, hparams):
        return self.jitted(state, batch, ref_params, hparams, self.frozen)

    def lower(self, state, batch, ref_params, hparams):
        return self.jitted.lower(state, batch, ref_params, hparams, self.frozen)


def build_train_step(params, graphdef, tx: optax.GradientTransformation, mesh, *, stage: str, sums_fn: Callable,
                     ref_params=None, ref_graphdef=None, frozen=None, dropout_seed: int | None = None) -> BuiltStep:
    """The initial state and the jitted step for ``stage`` ("sft", "po", "rm"); see the module docstring.

    ``sums_fn``: :func:`lnpo.train.steps.micro_sums_fn` (or any function of the same contract);
    ``ref_params``/``ref_graphdef``: an in-step reference (None: none, or cached log-probs in the batch).
    LoRA: ``params`` are the adapters, ``frozen`` the base state (in its own shardings, not donated);
    ``ref_graphdef`` without ``ref_params`` makes the base with adapters off the reference; ``dropout_seed``
    turns LoRA dropout on (:func:`lnpo.train.steps.train_step`)."""
    state, state_shardings = initial_state(params, tx, mesh)
    replicated = NamedSharding(mesh, P())

    def step_fn(state, batch, ref_params, hparams, frozen=None):
        with parallel.use_rules(mesh):
            return steps.train_step(state, batch, ref_params, hparams, frozen, graphdef=graphdef,
                                    ref_graphdef=ref_graphdef, tx=tx, stage=stage, sums_fn=sums_fn,
                                    dropout_seed=dropout_seed)

    ref_shardings = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
    shardings = (state_shardings, NamedSharding(mesh, BATCH_SPEC), ref_shardings, replicated)
    if frozen is None:
        jitted = jax.jit(step_fn, in_shardings=shardings, out_shardings=(state_shardings, replicated),
                         donate_argnums=0)
    else:
        frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
        jitted = WithFrozen(jax.jit(step_fn, in_shardings=(*shardings, frozen_shardings),
                                    out_shardings=(state_shardings, replicated), donate_argnums=0), frozen)
    return BuiltStep(state=state, state_shardings=state_shardings, jitted=jitted)
