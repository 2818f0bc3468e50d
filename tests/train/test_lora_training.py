"""LoRA preference optimization end to end: step-0 loss, what trains and is checkpointed, PEFT parity after
training, resume."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from train_helpers import losses_of, small_config

from lnpo.sweep.overrides import apply_overrides
from lnpo.train.run import run

LORA = {"model.lora.rank": 4, "model.lora.alpha": 8.0, "reference.mode": "base", "optim.lr": 1e-2,
        "loss.name": "dpo", "loss.beta": 0.5}


def _lora_config(model, task, **overrides):
    c = small_config(model, task)
    c.loss = type(c.loss)({"name": "dpo", "beta": 0.5})
    apply_overrides(c, {**LORA, **overrides})
    return c


def base_vocab(model_dir) -> int:
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)["vocab_size"]


def _ids_and_mask(vocab, rows=2, length=12):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (rows, length))
    mask = np.ones((rows, length), np.int64)
    mask[-1, -4:] = 0
    return np.where(mask == 1, ids, 0), mask


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_lora_dpo_trains_the_adapters_alone_from_log2_and_exports_for_peft(tmp_path, tiny_sft_dir, task_files):
    import peft
    import torch
    import transformers

    workdir = str(tmp_path / "run")
    summary = run(_lora_config(tiny_sft_dir, task_files, **{"train.steps": 3}), workdir)
    rows = _metrics(workdir)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0: policy == reference at step 0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert not os.path.exists(os.path.join(os.path.dirname(workdir), "runs", "reference_cache"))

    # the checkpoint holds the adapters and their optimizer state only
    with open(os.path.join(workdir, "checkpoints", "3", "state", "_METADATA")) as f:
        tree = json.load(f)["tree_metadata"]
    arrays = [k for k, v in tree.items() if (v.get("value_metadata") or {}).get("write_shape")]  # not scalars
    assert any("'mu'" in k for k in arrays) and any("'nu'" in k for k in arrays)
    assert arrays and all("'lora_a'" in k or "'lora_b'" in k for k in arrays), arrays

    # PEFT parity after training: adapter/ on the transformers base == merged export/ == lnpo
    adapter, merged = os.path.join(workdir, "adapter"), summary["export"]
    assert merged == os.path.join(os.path.abspath(workdir), "export")
    ids, mask = _ids_and_mask(base_vocab(tiny_sft_dir))
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_sft_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        plain = base(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
        pm = peft.PeftModel.from_pretrained(base, adapter).eval()
        via_peft = pm(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
        m = transformers.AutoModelForCausalLM.from_pretrained(merged, attn_implementation="eager").eval()
        via_merged = m(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask)).logits.numpy()
    valid = mask == 1
    scale = np.abs(plain[valid]).max()
    assert np.abs(via_peft - plain)[valid].max() > 1e-3 * scale  # training moved the adapters
    assert np.abs(via_peft - via_merged)[valid].max() < 1e-4 * scale

    import jax.numpy as jnp

    from lnpo.models import from_pretrained, lora, peft_io

    ours = from_pretrained(tiny_sft_dir)
    lora.add_adapters(ours, peft_io.read_spec(adapter), __import__("jax").random.key(1))
    peft_io.load_adapter(ours, adapter)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits = np.asarray(ours(jnp.asarray(ids), positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask)))
    assert np.abs(logits - via_peft)[valid].max() < 1e-4 * scale


def test_interrupted_lora_run_resumes_as_an_uninterrupted_one(tmp_path, tiny_sft_dir, task_files):
    common = {"optim.schedule": "constant", "train.checkpoint_every": 2, "model.lora.dropout": 0.1}
    straight = str(tmp_path / "straight")
    run(_lora_config(tiny_sft_dir, task_files, **common, **{"train.steps": 4}), straight)
    resumed = str(tmp_path / "resumed")
    run(_lora_config(tiny_sft_dir, task_files, **common, **{"train.steps": 2, "train.export": False}), resumed)
    run(_lora_config(tiny_sft_dir, task_files, **common, **{"train.steps": 4}), resumed)
    a, b = losses_of(straight), losses_of(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a == b


MESH_SCRIPT = """
import json, sys
sys.path.insert(0, "tests/train")
import jax
from test_lora_training import _lora_config
from train_helpers import losses_of
from lnpo.train.run import run
assert jax.device_count() == 8, jax.devices()
config = _lora_config(MODEL, TASK, **{"mesh.shape": (2, 2, 2), "train.steps": 3, "train.checkpoint_every": 100,
                                      "train.micro_batches": 2, "data.layout": "packed"})
run(config, ROOT)
print("RESULT" + json.dumps(losses_of(ROOT)))
"""


@pytest.mark.slow
def test_lora_on_a_2x2x2_mesh_equals_one_device(tmp_path, tiny_sft_dir, task_files, simulated_devices):
    from train_helpers import result_of, run_python

    code = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nROOT={str(tmp_path / 'mesh')!r}\n" + MESH_SCRIPT
    proc = run_python(code, env_extra=simulated_devices(8))
    result = {int(k): v for k, v in result_of(proc).items()}
    single = str(tmp_path / "single")
    run(_lora_config(tiny_sft_dir, task_files, **{"mesh.shape": (1, 1, 1), "train.steps": 3,
                                                  "train.checkpoint_every": 100, "train.micro_batches": 2,
                                                  "data.layout": "packed"}), single)
    expected = losses_of(single)
    assert sorted(result) == sorted(expected) == [1, 2, 3]
    np.testing.assert_allclose([result[k] for k in expected], [expected[k] for k in expected], rtol=2e-5, atol=2e-6)
