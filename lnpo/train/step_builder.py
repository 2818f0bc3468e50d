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

``build_stage_step(...)`` is what both callers actually call: from a stage's name, its objective, the
optimizer settings and the micro-batch size it makes the optimizer, the stage's micro-sums function and the
step's replicated hyperparameter input, then :func:`build_train_step`; ``tests/benchmarks`` compares the
lowered programs of the trainer's and the benchmark's calls.
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
from lnpo.train import stages, steps
from lnpo.train.optim import make_optimizer
from lnpo.train.steps import BATCH_SPEC


@dataclasses.dataclass(frozen=True)
class BuiltStep:
    """The initial state (in ``state_shardings``), its shardings, and the jitted step."""

    state: steps.TrainState
    state_shardings: steps.TrainState
    jitted: Callable
    hparams: dict | None = None  # build_stage_step: the replicated step_hparams input
    schedule: Callable | None = None  # build_stage_step: the learning rate at each step
    sums_fn: Callable | None = None  # build_stage_step: the stage's micro-sums function (the held-out loss's too)


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


def step_function(graphdef, tx: optax.GradientTransformation, mesh, *, sums_fn: Callable, ref_graphdef=None):
    """``step_fn(state, batch, ref_params, hparams)``: :func:`lnpo.train.steps.train_step` under ``mesh``'s
    logical axis rules, before jit (what :func:`build_train_step` jits)."""

    def step_fn(state, batch, ref_params, hparams):
        with parallel.use_rules(mesh):
            return steps.train_step(state, batch, ref_params, hparams, graphdef=graphdef,
                                    ref_graphdef=ref_graphdef, tx=tx, sums_fn=sums_fn)

    return step_fn


def build_train_step(params, graphdef, tx: optax.GradientTransformation, mesh, *, sums_fn: Callable,
                     ref_params=None, ref_graphdef=None) -> BuiltStep:
    """The initial state and the jitted step; see the module docstring.

    ``params``: the parameters the optimizer trains (``nnx.split(model, nnx.Param)``'s state);
    ``sums_fn``: a stage's micro-sums function (:func:`lnpo.train.stages.micro_sums_fn`, or any function of
    its contract); ``ref_params``/``ref_graphdef``: an in-step reference (None: none, or cached log-probs in
    the batch)."""
    state, state_shardings = initial_state(params, tx, mesh)
    replicated = NamedSharding(mesh, P())
    step_fn = step_function(graphdef, tx, mesh, sums_fn=sums_fn, ref_graphdef=ref_graphdef)
    ref_shardings = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
    jitted = jax.jit(step_fn,
                     in_shardings=(state_shardings, NamedSharding(mesh, BATCH_SPEC), ref_shardings, replicated),
                     out_shardings=(state_shardings, replicated), donate_argnums=0)
    return BuiltStep(state=state, state_shardings=state_shardings, jitted=jitted)


def build_stage_step(params, graphdef, mesh, *, stage: str, optim, total_steps: int, learning_rate: float,
                     num_pairs: int, chunk_size: int, objective=None, loss_hparams: dict | None = None, seed: int = 0,
                     ref_params=None, ref_graphdef=None, sums_fn: Callable | None = None) -> BuiltStep:
    """:func:`build_train_step` for stage ``stage`` (:mod:`lnpo.train.stages`) with its optimizer and inputs.

    ``optim``: the optimizer settings (``config.optim``: schedule, warmup_steps, clip_norm, b1, b2, eps,
    weight_decay) for ``total_steps`` steps at peak ``learning_rate``; ``objective``/``loss_hparams``: the
    ``po`` stage's (:func:`lnpo.losses.get`, :func:`lnpo.losses.validate`); ``num_pairs`` pairs (examples)
    per micro-batch, log-probs in ``chunk_size`` blocks; ``sums_fn`` replaces the stage's micro-sums
    function (a benchmark's unchunked baseline). The returned step's ``hparams`` are its replicated
    :func:`lnpo.train.steps.step_hparams` input (inputs, not constants: a sweep's grid points share one
    compiled program) and ``schedule`` the learning rate at each step."""
    tx, schedule = make_optimizer(optim, steps=total_steps)
    if sums_fn is None:
        sums_fn = stages.micro_sums_fn(stage, objective=objective, num_pairs=num_pairs, chunk_size=chunk_size,
                                       seed=seed)
    built = build_train_step(params, graphdef, tx, mesh, sums_fn=sums_fn, ref_params=ref_params,
                             ref_graphdef=ref_graphdef)
    hparams = jax.device_put(steps.step_hparams(learning_rate, loss_hparams or {}), NamedSharding(mesh, P()))
    return dataclasses.replace(built, hparams=hparams, schedule=schedule, sums_fn=sums_fn)
