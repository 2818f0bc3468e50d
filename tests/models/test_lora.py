"""LoRA adapters: PEFT parity in and out, the merged export, base-off switch, gradients, int8 base."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_tiny import build_hf_model, hf_logits, random_batch

import lnpo.models as M
from lnpo.errors import ConfigError, ModelError
from lnpo.models import lora, peft_io


def _hf_dir(tmp_path, family="llama_untied_bias"):
    path = str(tmp_path / "hf")
    build_hf_model(family).save_pretrained(path, safe_serialization=True)
    return path


def _randomize(model, seed=1, scale=0.2):
    """Nonzero A and B (B = 0 would make any adapter mapping look right)."""
    key = jax.random.key(seed)
    for i, proj in enumerate(lora.projections(model).values()):
        if proj.lora_a is None:
            continue
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        proj.lora_a[...] = jax.random.normal(ka, proj.lora_a.shape) * scale
        proj.lora_b[...] = jax.random.normal(kb, proj.lora_b.shape) * scale


def _ours(model, ids, mask):
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    return np.asarray(model(jnp.asarray(ids), positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask)))


def _close(a, b, mask, rel=1e-4):
    scale = float(np.abs(b[mask == 1]).max())
    err = float(np.abs(a - b)[mask == 1].max())
    assert err < rel * scale, f"max abs diff {err:.3g} vs logits scale {scale:.3g}"


@pytest.mark.parametrize("targets,rslora", [("all-linear", False), ("q_proj,v_proj,down_proj", True)])
def test_exported_adapter_loads_in_peft_with_lnpo_logits(tmp_path, targets, rslora):
    import peft
    import transformers

    hf_dir = _hf_dir(tmp_path)
    spec = lora.LoraSpec(rank=4, alpha=8.0, targets=lora.parse_targets(targets), rslora=rslora)
    model = M.from_pretrained(hf_dir)
    lora.add_adapters(model, spec, jax.random.key(0))
    _randomize(model)
    peft_io.save_adapter(model, spec, str(tmp_path / "adapter"), base_model_name_or_path=hf_dir)
    ids, mask = random_batch()
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    plain = hf_logits(base, ids, mask)
    peft_model = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ref = hf_logits(peft_model, ids, mask)
    ours = _ours(model, ids, mask)
    assert np.abs(ref - plain).max() > 1e-2  # the adapters matter on this input
    _close(ours, ref, mask)


def test_peft_adapter_loads_into_lnpo(tmp_path):
    """init_from: a PEFT-made adapter (random A and B) gives PEFT's logits in lnpo."""
    import peft
    import torch
    import transformers

    hf_dir = _hf_dir(tmp_path)
    base = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    cfg = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["k_proj", "o_proj", "up_proj"], task_type="CAUSAL_LM")
    pm = peft.get_peft_model(base, cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.2)
    pm.save_pretrained(str(tmp_path / "adapter"))
    ids, mask = random_batch()
    ref = hf_logits(pm.eval(), ids, mask)
    spec = peft_io.read_spec(str(tmp_path / "adapter"))
    assert spec.targets == ("k_proj", "o_proj", "up_proj") and spec.rank == 3 and spec.alpha == 5.0
    model = M.from_pretrained(hf_dir)
    lora.add_adapters(model, spec, jax.random.key(0))
    peft_io.load_adapter(model, str(tmp_path / "adapter"))
    _close(_ours(model, ids, mask), ref, mask)


def test_merged_export_loads_in_plain_transformers(tmp_path):
    import transformers

    hf_dir = _hf_dir(tmp_path)
    spec = lora.LoraSpec(rank=4, alpha=16.0)
    model = M.from_pretrained(hf_dir)
    lora.add_adapters(model, spec, jax.random.key(0))
    _randomize(model)
    M.save_pretrained(peft_io.merged_model(model), str(tmp_path / "merged"))
    ids, mask = random_batch()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), attn_implementation="eager")
    _close(hf_logits(hf.eval(), ids, mask), _ours(model, ids, mask), mask)


def test_fresh_adapters_leave_the_base_logits_unchanged_and_follow_peft_init(tmp_path):
    hf_dir = _hf_dir(tmp_path)
    base = M.from_pretrained(hf_dir)
    model = M.from_pretrained(hf_dir)
    lora.add_adapters(model, lora.LoraSpec(rank=8, alpha=16.0), jax.random.key(0))
    ids, mask = random_batch()
    np.testing.assert_array_equal(_ours(model, ids, mask), _ours(base, ids, mask))
    q = model.layers.attn.q_proj
    a = np.asarray(q.lora_a[...])
    bound = 1 / np.sqrt(32)  # kaiming_uniform(a=sqrt(5)) of torch's [r, in=32]: U(-1/sqrt(in), 1/sqrt(in))
    assert a.shape == (3, 32, 8) and np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound
    assert not np.asarray(q.lora_b[...]).any()
    o = model.layers.attn.o_proj  # o's input is heads x head_dim: fan-in 32, A [L, H, Dh, r]
    assert o.lora_a.shape == (3, 4, 8, 8) and o.lora_b.shape == (3, 8, 32)
    assert o.lora_a.get_metadata()["out_sharding"] == ("layers", "heads", "head_dim", None)
    assert o.lora_b.get_metadata()["out_sharding"] == ("layers", None, "embed")


def test_adapters_off_equals_an_explicit_frozen_copy_bit_for_bit(tmp_path):
    hf_dir = _hf_dir(tmp_path)
    model = M.from_pretrained(hf_dir)
    lora.add_adapters(model, lora.LoraSpec(rank=4, alpha=8.0), jax.random.key(0))
    _randomize(model)
    graphdef, adapters, base = lora.split(model)
    off = nnx.merge(lora.base_graphdef(graphdef, adapters, base), base)
    copy_gd, copy_params = nnx.split(M.from_pretrained(hf_dir), nnx.Param)
    copy = nnx.merge(copy_gd, jax.tree.map(lambda x: x + 0, copy_params))
    ids, mask = random_batch()
    f = jax.jit(lambda m: _ours_jax(m, ids, mask))
    np.testing.assert_array_equal(np.asarray(f(off)), np.asarray(f(copy)))
    assert np.abs(np.asarray(f(model)) - np.asarray(f(copy))).max() > 1e-2
    # no copy: the adapters-off model holds the base's own buffers
    flat_off = dict(nnx.state(off, nnx.Param).flat_state())
    for path, var in base.flat_state():
        assert flat_off[path].value is var.value


def _ours_jax(model, ids, mask):
    positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
    return model(jnp.asarray(ids), positions=positions, segment_ids=jnp.asarray(mask))


def test_adapter_gradients_match_finite_differences():
    """float32 central differences (eps 2e-2: truncation O(eps^2), rounding ~5e-4) against jax.grad."""
    if True:
        cfg = M.ModelConfig.tiny(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                                 num_kv_heads=1, param_dtype="float32", compute_dtype="float32")
        model = M.Decoder(cfg, rngs=nnx.Rngs(0))
        spec = lora.LoraSpec(rank=2, alpha=4.0, targets=("q_proj", "o_proj", "down_proj"))
        lora.add_adapters(model, spec, jax.random.key(0))
        _randomize(model, scale=0.3)
        graphdef, adapters, base = lora.split(model)
        ids = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 6)))
        w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 64)), jnp.float32)

        def loss(ad):
            m = nnx.merge(graphdef, ad, base)
            return jnp.sum(jax.nn.log_softmax(m(ids))[:, -1] * w[:, -1])  # the last position sees every adapter

        grads = jax.grad(loss)(adapters)
        flat_a, treedef = jax.tree.flatten(adapters)
        flat_g = jax.tree.leaves(grads)
        rng = np.random.default_rng(2)
        eps = 2e-2
        loss = jax.jit(loss)
        checked = 0
        for leaf, g in zip(flat_a, flat_g):
            for _ in range(3):
                idx = tuple(int(rng.integers(s)) for s in leaf.shape)
                bump = lambda d, idx=idx, leaf=leaf: jax.tree.unflatten(treedef, [x.at[idx].add(d) if x is leaf else x
                                                                                  for x in flat_a])
                fd = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
                assert abs(float(fd) - float(g[idx])) <= 1.5e-3 + 1e-2 * abs(float(fd)), (idx, fd, g[idx])
                checked += abs(float(g[idx])) > 1e-2
        assert checked >= 6  # most checked entries have a gradient well above the tolerance


def test_int8_base_is_close_to_the_float_base(tmp_path):
    hf_dir = _hf_dir(tmp_path)
    ref = M.from_pretrained(hf_dir)
    model = M.from_pretrained(hf_dir)
    lora.quantize_base(model)
    q = model.layers.mlp.gate_proj
    assert q.kernel[...].dtype == jnp.int8 and q.kernel_scale.shape == (3, 64)
    w = np.asarray(ref.layers.mlp.gate_proj.kernel[...])
    # per output channel: |w - q s| <= s / 2, s = max|w| / 127 over the input dim
    np.testing.assert_allclose(np.asarray(lora.dequantized(q)), w, atol=float(np.abs(w).max()) / 254 * 1.0001)
    ids, mask = random_batch()
    a, b = _ours(model, ids, mask), _ours(ref, ids, mask)
    err = np.abs(a - b)[mask == 1].max() / np.abs(b[mask == 1]).max()
    assert 0 < err < 0.05


def test_config_errors_name_the_field():
    import ml_collections

    good = dict(rank=8, alpha=16.0, dropout=0.0, targets="all-linear", rslora=False, base_dtype="float32",
                init_from="")
    lora.check_config(ml_collections.ConfigDict(good))
    for field, value in (("rank", -1), ("rank", 1.5), ("alpha", 0), ("dropout", 1.0), ("targets", "q_proj,lm_head"),
                         ("base_dtype", "int4"), ("rslora", "yes"), ("init_from", "/nonexistent")):
        with pytest.raises(ConfigError, match=rf"^config\.model\.lora\.{field}: "):
            lora.check_config(ml_collections.ConfigDict({**good, field: value}))


def test_fused_projections_are_refused(tmp_path):
    model = M.from_pretrained(_hf_dir(tmp_path, "phi3"))
    with pytest.raises(ModelError, match="fused"):
        lora.add_adapters(model, lora.LoraSpec(rank=2, alpha=2.0), jax.random.key(0))


def test_adapter_config_matches_peft_fields(tmp_path):
    import peft

    spec = lora.LoraSpec(rank=4, alpha=8.0, dropout=0.05, targets=("q_proj", "v_proj"), rslora=True)
    cfg = peft_io.adapter_config(spec, "base")
    os.makedirs(tmp_path / "a")
    with open(tmp_path / "a" / "adapter_config.json", "w") as f:
        json.dump(cfg, f)
    loaded = peft.LoraConfig.from_pretrained(str(tmp_path / "a"))
    assert (loaded.r, loaded.lora_alpha, loaded.lora_dropout, loaded.use_rslora) == (4, 8.0, 0.05, True)
    assert set(loaded.target_modules) == {"q_proj", "v_proj"}
