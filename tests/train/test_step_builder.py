"""One builder of the jitted train step (lnpo.train.step_builder): the trainer and benchmarks/dpo_step.py both
run the step it builds, with the optimizer state sharded like the parameters and the state donated."""

from __future__ import annotations

import importlib.util
import os

import jax
import numpy as np
import pytest
from train_helpers import REPO, small_config

from lnpo.train import step_builder
from lnpo.train.run import run

BUILD = step_builder.build_train_step  # the real builder (the spies below wrap it)


class Spy:
    """Wraps build_train_step: records each call and counts how often its step is lowered or called."""

    def __init__(self):
        self.calls, self.uses = [], 0

    def __call__(self, *args, **kwargs):
        built = BUILD(*args, **kwargs)
        self.calls.append((args, kwargs, built))
        spy = self

        class Counted:
            def __call__(self, *a, **k):
                spy.uses += 1
                return built.jitted(*a, **k)

            def lower(self, *a, **k):
                spy.uses += 1
                return built.jitted.lower(*a, **k)

        return step_builder.BuiltStep(state=built.state, state_shardings=built.state_shardings, jitted=Counted())


def test_optimizer_state_is_sharded_like_the_parameters_and_the_state_is_donated():
    import optax
    from flax import nnx

    from lnpo import losses, parallel
    from lnpo.models import ModelConfig, init_sharded
    from lnpo.train import stages, steps

    mesh = parallel.make_mesh((-1, 1, 1))
    cfg = ModelConfig.tiny(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                           num_kv_heads=1, max_position_embeddings=64)
    graphdef, params = nnx.split(init_sharded(cfg, 0, mesh), nnx.Param)
    tx = optax.adamw(1e-3)
    sums_fn = stages.micro_sums_fn("po", objective=losses.get("dpo"), num_pairs=2, chunk_size=8)
    built = step_builder.build_train_step(params, graphdef, tx, mesh, sums_fn=sums_fn)
    param_shardings = jax.tree.leaves(jax.tree.map(lambda x: x.sharding, params))
    mu = built.state_shardings.opt_state[0].mu
    assert jax.tree.leaves(mu) == param_shardings
    for leaf, sharding in zip(jax.tree.leaves(built.state), jax.tree.leaves(built.state_shardings)):
        assert leaf.sharding == sharding
    from lnpo.data.layouts import layout_pairs

    pairs = [{"prompt_ids": [3, 4], "chosen_ids": [5, 6], "rejected_ids": [7]}] * 2
    batch = {k: v[None] for k, v in layout_pairs(pairs, "padded", 8).items()}
    batch["example_valid"] = np.ones((1, 2), np.float32)
    batch["ref_chosen"] = batch["ref_rejected"] = np.zeros((1, 2), np.float32)
    hparams = steps.step_hparams(1e-3, losses.validate("dpo", {"beta": 0.1}))
    text = built.jitted.lower(built.state, batch, None, hparams).as_text()
    assert text.count("tf.aliasing_output") >= len(jax.tree.leaves(built.state))  # every state buffer donated


@pytest.mark.slow
def test_trainer_and_benchmark_run_the_builders_step(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(step_builder, "build_train_step", spy)  # what build_stage_step calls
    config = small_config(tiny_sft_dir, task_files, **{"train.steps": 2, "train.checkpoint_every": 1000})
    run(config, str(tmp_path / "run"))
    assert len(spy.calls) == 1 and spy.uses == 2  # the trainer's two steps ran the built step

    spec = importlib.util.spec_from_file_location("dpo_step", os.path.join(REPO, "benchmarks", "dpo_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench_spy = Spy()
    monkeypatch.setattr(step_builder, "build_train_step", bench_spy)
    args = bench.parse_args(["--hidden", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64",
                             "--batch", "2", "--prompt-len", "4", "--response-len", "4", "--steps", "1",
                             "--warmup", "1", "--reference", "cache", "--release-host-memory", "off"])
    monkeypatch.setattr(bench, "lnpo_matmul_peak", lambda **kw: 1e9)
    line = bench.run_lnpo(args)
    assert len(bench_spy.calls) == 1 and bench_spy.uses == line["compiles"] == 1  # lowered from the builder's jit
