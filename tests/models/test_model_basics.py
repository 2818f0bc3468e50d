"""Parameter annotations, sharded loading, remat policies, dtypes and config mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import lnpo.models as M
from lnpo.parallel import DEFAULT_RULES, logical_to_spec

PARAM_AXES = {"embed", "vocab", "heads", "kv_heads", "head_dim", "mlp", "layers", "norm", "labels"}
# every optional parameter switched on
FULL = M.ModelConfig(
    vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
    qkv_bias=True, o_bias=True, mlp_bias=True, qk_norm=True, post_norms=True, norm_plus_one=True,
)
SMALL = M.ModelConfig(vocab_size=48, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      initializer_range=0.2)


def _flat(tree, is_leaf=None):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


@pytest.mark.parametrize("config", [FULL, SMALL.replace(num_labels=3, tie_embeddings=True)], ids=["full", "reward"])
def test_logical_axes_match_param_state(config):
    model = nnx.eval_shape(lambda: M.Decoder(config, rngs=nnx.Rngs(0)))
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    params = _flat(nnx.state(model, nnx.Param), is_leaf=is_var)
    axes = _flat(M.logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))
    assert params.keys() == axes.keys()
    for path, var in params.items():
        names = axes[path]
        assert len(names) == len(var.shape), path
        assert set(names) <= PARAM_AXES, (path, names)
        assert (names[0] == "layers") == ("['layers']" in path), path
    # flax's own mechanism reads the same names from the Param metadata
    with nnx.logical_axis_rules(DEFAULT_RULES):
        specs = _flat(nnx.get_partition_spec(nnx.state(model, nnx.Param)), is_leaf=is_var)
    for path, spec in specs.items():
        assert spec.get_value() == logical_to_spec(axes[path], DEFAULT_RULES), path
    if config.num_labels:
        assert "['score_head']['kernel']" in "".join(params) and not any("lm_head" in p for p in params)


def test_random_init_statistics_of_the_embedded_tiny_model():
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from configs.base import get_base
    from lnpo.implied import EMBEDDED_VOCAB, tiny_model_config

    cfg = tiny_model_config(get_base(), vocab_size=EMBEDDED_VOCAB)
    model = M.Decoder(cfg, rngs=nnx.Rngs(0))
    n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert 1_000_000 <= n <= 5_000_000  # the embedded task's model: about 1.3M parameters
    q = np.asarray(model.layers.attn.q_proj.kernel[...])
    assert abs(q.std() - 0.02) < 2e-3 and not np.allclose(q[0], q[1])  # layers differ
    np.testing.assert_array_equal(np.asarray(model.final_norm.scale[...]), 1.0)
    other = M.Decoder(cfg, rngs=nnx.Rngs(1))
    assert not np.allclose(q, np.asarray(other.layers.attn.q_proj.kernel[...]))


def _checkpoint_eqns(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("checkpoint", "remat", "remat2"):
            yield eqn
        for p in eqn.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                yield from _checkpoint_eqns(inner)


def test_remat_policies():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 48, size=(2, 8)), jnp.int32)
    graphdef, state = nnx.split(M.Decoder(SMALL, rngs=nnx.Rngs(0)))

    def loss_fn(remat):
        gd = nnx.graphdef(nnx.eval_shape(lambda: M.Decoder(SMALL.replace(remat=remat), rngs=nnx.Rngs(0))))

        def loss(state):
            logits = nnx.merge(gd, state)(ids)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 3])

        return loss

    # each policy wraps the scanned layer in a checkpoint with that policy
    policies = {}
    for remat in ("none", "full", "dots", "dots_saveable"):
        eqns = list(_checkpoint_eqns(jax.make_jaxpr(jax.grad(loss_fn(remat)))(state).jaxpr))
        policies[remat] = [e.params["policy"] for e in eqns]
    assert policies["none"] == []
    assert policies["full"] == [None]
    assert policies["dots"] == [jax.checkpoint_policies.dots_with_no_batch_dims_saveable]
    assert policies["dots_saveable"] == [jax.checkpoint_policies.dots_saveable]
    # and gradients are unchanged
    ref = jax.jit(jax.value_and_grad(loss_fn("none")))(state)
    got = jax.jit(jax.value_and_grad(loss_fn("dots")))(state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), got, ref)


def test_bfloat16_compute():
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 48, size=(2, 8)), jnp.int32)
    graphdef, state = nnx.split(M.Decoder(SMALL, rngs=nnx.Rngs(0)))
    bf16_def = nnx.graphdef(nnx.eval_shape(lambda: M.Decoder(SMALL.replace(compute_dtype="bfloat16"),
                                                             rngs=nnx.Rngs(0))))

    def run(gd):
        def f(state):
            m = nnx.merge(gd, state)
            h = m.hidden_states(ids)
            return h, m.unembed(h)

        h, logits = jax.jit(f)(state)
        return h.dtype, logits

    (h32, ref), (h16, got) = run(graphdef), run(bf16_def)
    assert h32 == jnp.float32 and h16 == jnp.bfloat16 and got.dtype == jnp.float32
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() < 5e-2 * np.abs(np.asarray(ref)).max()


def test_hf_config_mapping_roundtrip():
    import transformers
    from hf_tiny import FAMILIES, hf_config

    for family in FAMILIES:
        hf = hf_config(family).to_dict()
        config = M.ModelConfig.from_hf(hf)
        again = M.ModelConfig.from_hf(config.to_hf())
        assert again == config, family
        # transformers accepts what we write, with the same layer layout
        back = transformers.AutoConfig.for_model(**config.to_hf())
        assert list(back.layer_types if hasattr(back, "layer_types") else []) in ([], list(config.layer_types))
    assert M.ModelConfig.from_hf(hf_config("gemma2").to_dict()).layer_windows == (4, 0, 4)
    assert M.ModelConfig.from_hf(hf_config("qwen2_bias").to_dict()).layer_windows == (0, 4, 4)
    # a Phi-3-128k style config.json: legacy "su" type, original length at top level
    raw = dict(model_type="phi3", vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, max_position_embeddings=64, original_max_position_embeddings=16,
               rope_scaling={"type": "su", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4})
    rs = M.ModelConfig.from_hf(raw).rope_scaling
    assert rs.rope_type == "longrope" and rs.original_max_position_embeddings == 16 and rs.long_factor == (2.0,) * 4


def test_sharded_load_on_a_mesh(tmp_path, simulated_devices):
    """FSDP x tensor-parallel placement straight from the file, on 4 fake CPU devices."""
    M.save_pretrained(M.Decoder(SMALL, rngs=nnx.Rngs(0)), str(tmp_path))
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp, numpy as np
        import lnpo.models as M
        from lnpo import parallel
        shapes = []
        orig = jax.make_array_from_callback
        def spy(shape, sharding, cb):
            return orig(shape, sharding, lambda idx: shapes.append(cb(idx).shape) or cb(idx))
        jax.make_array_from_callback = spy
        mesh = parallel.make_mesh((1, 2, 2))
        model = M.from_pretrained({str(tmp_path)!r}, mesh=mesh)
        k = model.layers.attn.q_proj.kernel[...]
        assert k.sharding.spec == parallel.logical_to_spec(("layers", "embed", "heads", "head_dim")), k.sharding
        assert k.addressable_shards[0].data.shape == (2, 8, 2, 4), k.addressable_shards[0].data.shape
        assert (2, 8, 2, 4) in shapes and (2, 16, 4, 4) not in shapes  # only shards were read
        ids = jnp.asarray(np.arange(16).reshape(2, 8) % 48, jnp.int32)
        with parallel.use_rules(mesh):
            sharded = jax.jit(lambda ids: model(ids))(ids)
        plain = M.from_pretrained({str(tmp_path)!r})(ids)
        np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), atol=1e-5)
        print("OK")
        """
    )
    env = {**os.environ, **simulated_devices(4),
           "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_save_writes_generation_config(tmp_path):
    M.save_pretrained(M.Decoder(SMALL.replace(eos_token_id=(2, 3), bos_token_id=1), rngs=nnx.Rngs(0)), str(tmp_path))
    with open(os.path.join(tmp_path, "generation_config.json")) as f:
        gen = json.load(f)
    assert gen["eos_token_id"] == [2, 3] and gen["bos_token_id"] == 1
    assert M.from_pretrained(str(tmp_path)).config.eos_token_id == (2, 3)


@pytest.mark.parametrize("chunk", [5, 8, 64])
def test_attention_query_chunks_match_whole(chunk):
    """attn_query_chunk computes the same attention in query chunks: outputs and gradients match."""
    cfg = SMALL.replace(num_layers=2, remat="full")
    chunked = cfg.replace(attn_query_chunk=chunk)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 48, (2, 16)), jnp.int32)
    segs = jnp.asarray([[1] * 10 + [2] * 6, [1] * 12 + [0] * 4], jnp.int32)

    def loss_and_grad(config):
        model = M.Decoder(config, rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            return nnx.merge(graphdef, p).hidden_states(ids, segment_ids=segs).astype(jnp.float32).sum()

        return jax.value_and_grad(loss)(params)

    (a, ga), (b, gb) = loss_and_grad(cfg), loss_and_grad(chunked)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="attn_query_chunk"):
        cfg.replace(attn_query_chunk=-1)
