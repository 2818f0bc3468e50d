"""The step's hyperparameter inputs: exact AdamW with the real learning rate, and one program per sweep."""

from __future__ import annotations

import types

import jax
import numpy as np
import optax
import pytest
from train_helpers import losses_of, result_of, run_python

from lnpo.train.optim import learning_rate_schedule, make_optimizer
from lnpo.train.steps import step_hparams


@pytest.mark.parametrize("schedule,warmup", [("cosine", 3), ("linear", 0), ("constant", 2)])
def test_unit_peak_updates_times_the_rate_equal_adamw_with_the_schedule(schedule, warmup):
    cfg = types.SimpleNamespace(lr=3e-4, warmup_steps=warmup, schedule=schedule, clip_norm=1.0, b1=0.9, b2=0.95,
                                eps=1e-8, weight_decay=0.1)
    steps = 8
    tx, lr_schedule = make_optimizer(cfg, steps=steps)
    # The reference: optax's own AdamW with the actual learning-rate schedule.
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        learning_rate_schedule(lr=cfg.lr, steps=steps, warmup_steps=warmup, schedule=schedule),
        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1))
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(5, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32)}
    state, ref_state = tx.init(params), reference.init(params)
    p, q = params, params
    for t in range(steps):
        assert float(lr_schedule(t)) == pytest.approx(
            float(learning_rate_schedule(lr=cfg.lr, steps=steps, warmup_steps=warmup, schedule=schedule)(t)))
        grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32) * 3.0, params)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, jax.tree.map(lambda u: u * np.float32(cfg.lr), updates))
        ref_updates, ref_state = reference.update(grads, ref_state, q)
        q = optax.apply_updates(q, ref_updates)
        for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    assert not np.allclose(p["w"], params["w"])  # the parameters did move


def test_step_hparams_are_float32_arrays_and_none_stays_none():
    hp = step_hparams(1e-3, {"beta": 0.1, "delta": None})
    assert hp["learning_rate"].dtype == np.float32 and hp["loss"]["beta"].dtype == np.float32
    assert hp["loss"]["delta"] is None
    assert jax.tree.structure(hp) == jax.tree.structure(step_hparams(5e-1, {"beta": 2.0, "delta": None}))


GRID_POINT = """
import json, os, sys
sys.path.insert(0, "tests/train")
from train_helpers import small_config
from lnpo.train.run import run
run(small_config(MODEL, TASK, **OVERRIDES), WORKDIR)
cache = os.environ["JAX_COMPILATION_CACHE_DIR"]
print("RESULT" + json.dumps(sorted(os.listdir(cache))))
"""


@pytest.mark.slow
def test_sweep_grid_points_differing_in_beta_and_lr_compile_nothing_new(tmp_path, tiny_sft_dir, task_files):
    """Two runs of a beta x lr grid in separate processes: the second finds every program it needs (train
    step, evaluation step, reference pass) in JAX's persistent compilation cache and adds no entry."""
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    entries = []
    for i, (beta, lr) in enumerate([(1.0, 1e-3), (0.1, 3e-4)]):
        overrides = {"loss.beta": beta, "optim.lr": lr, "train.eval_every": 2,
                     "reference.cache_dir": str(tmp_path / f"ref{i}")}
        head = (f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nOVERRIDES={overrides!r}\n"
                f"WORKDIR={str(tmp_path / f'run{i}')!r}\n")
        entries.append(result_of(run_python(head + GRID_POINT, env_extra=env)))
    assert len(entries[0]) >= 3  # the cache was used: step, eval step, reference pass, ...
    assert entries[1] == entries[0], sorted(set(entries[1]) - set(entries[0]))
    # ... while the two runs did train with their own hyperparameters
    assert losses_of(str(tmp_path / "run0")) != losses_of(str(tmp_path / "run1"))


@pytest.mark.parametrize("name,hparams", [("aot", {"beta": 0.5, "label_smoothing": 0.0}),
                                          ("bco_pair", {"beta": 0.5, "delta": None})])
@pytest.mark.parametrize("layout", ["padded", "shared_prompt"])
def test_dummy_pairs_of_a_partial_batch_change_nothing(name, hparams, layout):
    """A last eval batch filled up with the iterator's dummy pairs (example_valid 0) gives the
    same loss and metric sums as the real pairs alone, for objectives that couple the pairs
    of a batch (aot sorts them, bco_pair centres on their mean reward)."""
    import jax.numpy as jnp
    from flax import nnx

    from lnpo import losses
    from lnpo.data.iterator import DUMMY_PAIR
    from lnpo.data.layouts import layout_pairs
    from lnpo.models import Decoder, ModelConfig
    from lnpo.train.steps import po_micro_sums

    rng = np.random.default_rng(0)
    tok = lambda n: rng.integers(3, 64, int(n)).tolist()  # noqa: E731
    real = [{"prompt_ids": tok(rng.integers(2, 6)), "chosen_ids": tok(rng.integers(1, 6)),
             "rejected_ids": tok(rng.integers(1, 6))} for _ in range(4)]
    model = Decoder(ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                                num_kv_heads=1), rngs=nnx.Rngs(0))
    hp = {k: None if v is None else jnp.float32(v) for k, v in losses.validate(name, hparams).items()}

    def sums(pairs, valid):
        mb = {k: jnp.asarray(v) for k, v in layout_pairs(pairs, layout, 32).items()}
        mb["example_valid"] = jnp.asarray(valid, jnp.float32)
        mb["ref_chosen"] = jnp.asarray(np.arange(len(pairs)) * -3.0 - 20.0, jnp.float32)
        mb["ref_rejected"] = jnp.asarray(np.arange(len(pairs)) * 2.0 - 25.0, jnp.float32)
        return po_micro_sums(model, mb, objective=losses.get(name), hparams=hp, num_pairs=len(pairs),
                             chunk_size=32)

    alone = sums(real, [1, 1, 1, 1])
    filled = sums(real + [DUMMY_PAIR] * 2, [1, 1, 1, 1, 0, 0])
    assert set(alone.sums) == set(filled.sums) and float(filled.count) == float(alone.count) == 4
    for key in alone.sums:
        np.testing.assert_allclose(float(filled.sums[key]), float(alone.sums[key]), rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_sft_step_divides_by_the_batch_tokens_not_a_mean_of_micro_batch_means():
    """Two SFT micro-batches with 2 and 9 target tokens: the step's loss is the batch's summed NLL over its 11
    tokens (NumPy float64 from the full log-softmax), its count the tokens, and the held-out eval step gives the
    same weighted sums; the mean of the two micro-batch means would differ."""
    import jax.numpy as jnp
    from flax import nnx

    from lnpo.data.layouts import layout_sft
    from lnpo.models import Decoder, ModelConfig
    from lnpo.train import stages, steps

    model = Decoder(ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                num_kv_heads=1), rngs=nnx.Rngs(0))
    examples = [[{"prompt_ids": [3, 4, 5], "completion_ids": [6, 7]}],
                [{"prompt_ids": [3], "completion_ids": [8, 9, 10, 11, 12, 13, 14, 15, 16]}]]
    micro = [{k: np.asarray(v) for k, v in layout_sft(e, "padded", 16).items()} for e in examples]
    batch = {k: np.stack([m[k] for m in micro]) for k in micro[0]}
    batch["example_valid"] = np.ones((2, 1), np.float32)

    nll, tokens, means = 0.0, 0, []
    for m in micro:
        logits = np.asarray(model(jnp.asarray(m["input_ids"])), np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        mask = m["seq_index"] >= 0
        picked = np.take_along_axis(logp, m["targets"][..., None], -1)[..., 0]
        nll += -picked[mask].sum()
        tokens += int(mask.sum())
        means.append(-picked[mask].sum() / mask.sum())
    assert tokens == 11

    graphdef, params = nnx.split(model, nnx.Param)
    sums_fn = stages.micro_sums_fn("sft", num_pairs=1, chunk_size=8)
    tx = optax.sgd(0.0)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    _, metrics = steps.train_step(state, batch, None, step_hparams(0.0, {}), graphdef=graphdef, tx=tx,
                                  sums_fn=sums_fn)
    np.testing.assert_allclose(float(metrics["loss"]), nll / tokens, rtol=1e-5)
    assert float(metrics["tokens"]) == tokens and abs(nll / tokens - np.mean(means)) > 1e-3
    held_out = steps.eval_step(params, batch, None, {}, graphdef=graphdef, sums_fn=sums_fn)
    assert float(held_out.count) == tokens and held_out.count_name == "tokens"
    np.testing.assert_allclose(float(held_out.sums["loss"]), nll, rtol=1e-5)
