"""benchmarks/dpo_step.py measures the trainer's own step: for the same model, batch and settings, the
benchmark's code path and the trainer's (:func:`lnpo.train.trainer.make_stage_step`) lower to the same program,
with the same state shardings and the same donated arguments."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64", "--batch", "2",
        "--prompt-len", "6", "--response-len", "6", "--steps", "2", "--warmup", "1", "--logprob-chunk", "8"]


def _trainer_config(bench, args, total_steps: int):
    """configs/dpo.py with the benchmark's optimizer, DPO beta, step count, log-prob chunk and reference."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from configs.dpo import get_config

    config = get_config()
    for field, value in vars(bench.OPTIM).items():
        config.optim[field] = value
    config.loss.beta = bench.DPO_HPARAMS["beta"]
    config.train.steps = total_steps
    config.train.logprob_chunk = args.logprob_chunk
    config.train.global_batch = args.batch
    config.reference.mode = args.reference
    return config


def _batch(bench, args):
    from lnpo.data.layouts import layout_pairs

    pairs = bench.make_pairs(args, args.batch)
    local = {k: v[None] for k, v in layout_pairs(pairs, "padded", args.prompt_len + args.response_len).items()}
    local["example_valid"] = np.ones((1, args.batch), np.float32)
    if args.reference == "cache":
        local["ref_chosen"] = np.full((1, args.batch), -30.0, np.float32)
        local["ref_rejected"] = np.full((1, args.batch), -31.0, np.float32)
    return local


def _both(bench, reference):
    from lnpo import parallel
    from lnpo.train import trainer

    args = bench.parse_args(TINY + ["--reference", reference])
    total = args.warmup + args.steps
    mesh = parallel.make_mesh((-1, 1, 1))
    graphdef, params = bench.lnpo_model(args, mesh)
    benchmark, ref_params = bench.lnpo_step(args, params, graphdef, mesh, total_steps=total,
                                            seq_len=args.prompt_len + args.response_len)
    ours = trainer.make_stage_step(_trainer_config(bench, args, total), params, graphdef, mesh, num_pairs=args.batch,
                                   ref_params=ref_params, ref_graphdef=graphdef if ref_params is not None else None)
    batch = _batch(bench, args)
    lowered = [b.jitted.lower(b.state, batch, ref_params, b.hparams) for b in (benchmark, ours)]
    return benchmark, ours, lowered, (batch, ref_params)


@pytest.mark.parametrize("reference", ["cache", "in_step"])
def test_benchmark_and_trainer_lower_the_same_step(bench, reference):
    benchmark, ours, (bench_lowered, our_lowered), _ = _both(bench, reference)
    assert bench_lowered.as_text() == our_lowered.as_text()
    assert jax.tree.leaves(benchmark.state_shardings) == jax.tree.leaves(ours.state_shardings)
    donated = [[a.donated for a in jax.tree.leaves(lowered.args_info)] for lowered in (bench_lowered, our_lowered)]
    assert donated[0] == donated[1]
    assert sum(donated[1]) == len(jax.tree.leaves(ours.state))  # the whole state, and only it, donated


def test_the_comparison_sees_a_dropped_donation_or_unsharded_optimizer_state(bench):
    """The check above is not blind: the builder's step function jitted with the same shardings but without
    donation lowers to another program, and an optimizer state made by a plain ``tx.init`` (as the benchmark
    once did) has other shardings than the builder's."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from lnpo import parallel
    from lnpo.train import stages, step_builder, steps

    _, ours, (_, our_lowered), (batch, ref_params) = _both(bench, "cache")
    args = bench.parse_args(TINY)
    mesh = parallel.make_mesh((-1, 1, 1))
    graphdef, params = bench.lnpo_model(args, mesh)
    tx, _ = step_builder.make_optimizer(bench.OPTIM, steps=args.warmup + args.steps)
    from lnpo import losses

    sums_fn = stages.micro_sums_fn("po", objective=losses.get("dpo"), num_pairs=args.batch,
                                   chunk_size=args.logprob_chunk)
    step_fn = step_builder.step_function(graphdef, tx, mesh, sums_fn=sums_fn)
    replicated = NamedSharding(mesh, P())
    no_donation = jax.jit(step_fn, in_shardings=(ours.state_shardings, NamedSharding(mesh, steps.BATCH_SPEC), None,
                                                 replicated), out_shardings=(ours.state_shardings, replicated))
    donation = jax.jit(step_fn, in_shardings=(ours.state_shardings, NamedSharding(mesh, steps.BATCH_SPEC), None,
                                              replicated), out_shardings=(ours.state_shardings, replicated),
                       donate_argnums=0)
    assert donation.lower(ours.state, batch, None, ours.hparams).as_text() == our_lowered.as_text()
    assert no_donation.lower(ours.state, batch, None, ours.hparams).as_text() != our_lowered.as_text()
    plain = jax.tree.map(lambda x: x.sharding, tx.init(params))
    assert jax.tree.leaves(plain) != jax.tree.leaves(ours.state_shardings.opt_state)
