"""lnpo.plan counts LoRA: the frozen base in its dtype, float32 adapters and their AdamW state, no reference copy;
checked against XLA's memory analysis of the trainer's own compiled LoRA step."""

from __future__ import annotations

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # configs/ (the repository's config files) is imported from the repository root

from configs.lora_dpo import get_config  # noqa: E402
from lnpo import implied  # noqa: E402
from lnpo import plan as planlib  # noqa: E402
from lnpo.sweep.overrides import apply_overrides  # noqa: E402

SMALL = dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
             model_type="llama")


def _config(tmp_path, **overrides):
    from lnpo.models import ModelConfig

    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(ModelConfig(**SMALL).to_hf()))
    c = get_config()
    c.model.path = str(d)
    c.train.global_batch = 8
    c.data.max_len = 64
    c.data.max_prompt_len = 32
    c.mesh.shape = (1, 1, 1)
    apply_overrides(c, overrides)
    return c


def _compiled(config):
    """XLA's memory analysis of the trainer's LoRA step (build_train_step with the frozen base as an argument)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lnpo import losses, parallel
    from lnpo.models import Decoder, lora
    from lnpo.train import stages, steps
    from lnpo.train.optim import make_optimizer
    from lnpo.train.step_builder import build_train_step

    mesh = parallel.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    base_dtype = config.model.lora.base_dtype
    cfg = implied.model_config(config).replace(param_dtype="bfloat16" if base_dtype == "int8" else base_dtype)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    lora.add_adapters(model, lora.spec_from_config(config.model.lora), jax.random.key(0))
    if base_dtype == "int8":
        lora.quantize_base(model)
    graphdef, adapters, frozen = lora.split(model)
    ref_graphdef = lora.base_graphdef(graphdef, adapters, frozen)
    tx, _ = make_optimizer(config.optim, steps=10)
    A, M = config.train.micro_batches, config.train.global_batch // config.train.micro_batches
    T = implied.row_length(config)
    sums_fn = stages.micro_sums_fn("po", objective=losses.get("dpo"), num_pairs=M,
                                   chunk_size=config.train.logprob_chunk)
    built = build_train_step(adapters, graphdef, tx, mesh, sums_fn=sums_fn, ref_graphdef=ref_graphdef,
                             frozen=frozen)
    batch = {k: jnp.zeros((A, 2 * M, T), jnp.int32) for k in steps.ROW_KEYS}
    batch["example_valid"] = jnp.zeros((A, M), jnp.float32)
    hparams = steps.step_hparams(1e-4, {"beta": 0.1})
    return built.jitted.lower(built.state, batch, None, hparams).compile().memory_analysis()


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16", "int8"])
def test_lora_plan_matches_the_compiled_step(tmp_path, base_dtype):
    config = _config(tmp_path, **{"model.lora.base_dtype": base_dtype, "model.lora.rank": 8})
    p = planlib.plan(config, chips=1)
    b = p["bytes"]
    assert p["reference"]["mode"] == "base" and b["reference"] == 0
    assert b["optimizer"] == pytest.approx(2 * b["adapters"], abs=64)  # mu + nu of the adapters (+ counters)
    mem = _compiled(config)
    # the step's inputs: base + adapters + their AdamW state + the batch (+ a few scalars)
    planned_args = b["params"] + b["adapters"] + b["optimizer"] + b["batch"]
    assert mem.argument_size_in_bytes == pytest.approx(planned_args, rel=0.01, abs=256)
    full = planlib.plan(_config(tmp_path, **{"model.lora.rank": 0, "reference.mode": "in_step"}), chips=1)["bytes"]
    per_base_byte = {"float32": 1.0, "bfloat16": 0.5, "int8": None}[base_dtype]
    if per_base_byte:
        assert b["params"] == pytest.approx(per_base_byte * full["params"], rel=1e-6)
    else:  # int8 projections + f32 scales; bf16 embeddings and norms
        assert 0.25 * full["params"] < b["params"] < 0.5 * full["params"]
    assert b["adapters"] < 0.1 * full["params"]
