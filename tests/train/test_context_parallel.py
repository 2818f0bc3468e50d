"""Context parallelism: a (data=2, context=4) mesh of 8 simulated CPU devices gives one device's
DPO losses, gradients and step parameters, for padded, packed and shared-prompt rows."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import result_of, run_python

SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from lnpo import losses, parallel
from lnpo.data.layouts import layout_pairs
from lnpo.models import Decoder, ModelConfig
from lnpo.models.decoder import param_shardings
from lnpo.train import stages, steps
assert jax.device_count() == 8, jax.devices()

cfg = ModelConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  sliding_window=24, layer_types=("sliding_attention", "full_attention"))
rng = np.random.default_rng(0)
tok = lambda n: rng.integers(3, 96, int(n)).tolist()
pairs = [{"prompt_ids": tok(rng.integers(4, 20)), "chosen_ids": tok(rng.integers(3, 40)),
          "rejected_ids": tok(rng.integers(3, 40))} for _ in range(4)]
objective = losses.get("dpo")
hp = steps.step_hparams(0.1, losses.validate("dpo", {"beta": 0.5}))
tx = optax.sgd(1.0)
sums_fn = stages.micro_sums_fn("po", objective=objective, num_pairs=len(pairs), chunk_size=16)
mesh = parallel.make_mesh((2, 1, 1, 4))
out = {}
for layout, chunk, impl in (("padded", 0, "xla"), ("packed", 0, "xla"), ("shared_prompt", 0, "xla"),
                            ("shared_prompt", 32, "xla"), ("packed", 0, "ring"), ("shared_prompt", 0, "ring")):
    graphdef, params = nnx.split(Decoder(cfg.replace(attn_query_chunk=chunk, attn_implementation=impl),
                                         rngs=nnx.Rngs(0)), nnx.Param)
    T = 128 if layout == "shared_prompt" else 64
    rows = {"padded": 8, "packed": 6, "shared_prompt": 4}[layout]
    mb = {k: np.asarray(v, np.int32) for k, v in layout_pairs(pairs, layout, T, num_rows=rows).items()}
    mb["example_valid"] = np.ones(len(pairs), np.float32)
    mb["ref_chosen"] = np.linspace(-40, -20, len(pairs)).astype(np.float32)
    mb["ref_rejected"] = np.linspace(-45, -15, len(pairs)).astype(np.float32)
    batch = {k: v[None] for k, v in mb.items()}

    def step(params, batch, mesh=None):
        state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
        def loss(p):
            return sums_fn(nnx.merge(graphdef, p), jax.tree.map(lambda x: x[0], batch), None, hp["loss"]).sums["loss"]
        new, metrics = steps.train_step(state, batch, None, hp, graphdef=graphdef, tx=tx, sums_fn=sums_fn)
        return metrics["loss"], jax.grad(loss)(params), new.params

    single = jax.jit(step)(params, batch)
    shard = lambda s: NamedSharding(mesh, s)
    batch_spec = {k: shard(P(None, ("data", "fsdp"))) for k in batch}
    p_shard = param_shardings(nnx.merge(graphdef, params), mesh)
    def on_mesh(params, batch):
        with parallel.use_rules(mesh):
            return step(params, batch)
    cp_fn = jax.jit(on_mesh, in_shardings=(p_shard, batch_spec))
    hlo = cp_fn.lower(params, batch).compile().as_text()
    cp = cp_fn(params, batch)
    leaves = lambda t: [np.asarray(x, np.float64).ravel().tolist() for x in jax.tree.leaves(t)]
    out[f"{layout} {chunk} {impl}"] = {"loss": [float(single[0]), float(cp[0])],
                   "grads": [leaves(single[1]), leaves(cp[1])],
                   "params": [leaves(single[2]), leaves(cp[2])], "all_gather": "all-gather" in hlo,
                   "permute": "collective-permute" in hlo,
                   "split_rows": f"f32[{rows // 2},{T // 4},32]" in hlo,
                   "rows": rows, "branches": int(mb["branch_ids"].max()), "segments": int(mb["segment_ids"].max())}
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_a_data_by_context_mesh_gives_one_devices_losses_gradients_and_step(simulated_devices):
    """(data=2, context=4): each row's 64 or 128 positions split over 4 chips (keys and values
    gathered per layer, a sliding-window and a global layer); the DPO loss equals one device's to
    1e-5 relative, every gradient and every parameter after one SGD step to fp32 rounding; also
    with query chunks of 32 (strided, so each chunk spans the shards), and with ring attention (the
    keys and values passed round the context axis instead of gathered)."""
    proc = run_python(SCRIPT, env_extra=simulated_devices(8))
    result = result_of(proc)
    for layout, r in result.items():
        assert r["split_rows"], layout  # each chip's activations: its rows' quarter of the positions
        if layout.endswith("ring"):  # the keys/values go round the ring, block by block
            assert r["permute"], layout
        else:  # the keys/values of a row are gathered across the context shards
            assert r["all_gather"], layout
        single, cp = r["loss"]
        assert abs(cp - single) <= 1e-5 * abs(single), (layout, single, cp)
        for a, b in zip(*r["grads"]):
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(b - a) <= 1e-5 * max(np.linalg.norm(a), 1e-30), layout
        for a, b in zip(*r["params"]):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=layout)
    assert result["packed 0 xla"]["segments"] > 1 and result["shared_prompt 0 xla"]["branches"] == 2
    assert sorted(result) == ["packed 0 ring", "packed 0 xla", "padded 0 xla", "shared_prompt 0 ring",
                              "shared_prompt 0 xla", "shared_prompt 32 xla"]
