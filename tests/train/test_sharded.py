"""Sharded training on 8 simulated CPU devices equals single-device training."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import losses_of, result_of, run_python, small_config

from lnpo.train.run import run

SCRIPT = """
import json, sys
sys.path.insert(0, "tests/train")
import jax
from train_helpers import small_config, losses_of
from lnpo.train.run import run
assert jax.device_count() == 8, jax.devices()
out = {}
# (1, 2, 4): 2 KV heads on a tensor axis of 4; (2, 1, 1, 4): each row split over a context axis of 4
for shape in [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4), (2, 1, 1, 4)]:
    mode = "in_step" if shape == (2, 2, 2) else "cache"
    config = small_config(MODEL, TASK, **{"mesh.shape": shape, "train.steps": 3, "reference.mode": mode,
                                          "train.checkpoint_every": 100})
    workdir = f"{ROOT}/{'x'.join(map(str, shape))}"
    run(config, workdir)
    out[str(shape)] = losses_of(workdir)
print("RESULT" + json.dumps(out))
"""


@pytest.mark.slow
def test_meshes_give_the_same_losses(tmp_path, tiny_sft_dir, task_files, simulated_devices):
    for attempt in range(3):
        code = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nROOT={str(tmp_path / f'try{attempt}')!r}\n" + SCRIPT
        proc = run_python(code, env_extra=simulated_devices(8))
        # Should XLA:CPU still abort a stuck in-process rendezvous (see tests/conftest.py), that is
        # the runtime, not lnpo: run it again. Any other failure fails at once.
        if proc.returncode == 0 or "Termination timeout" not in proc.stderr:
            break
    result = result_of(proc)
    # The reference: this process has one device, mesh (1, 1, 1).
    config = small_config(tiny_sft_dir, task_files, **{"mesh.shape": (1, 1, 1), "train.steps": 3,
                                                       "train.checkpoint_every": 100})
    run(config, str(tmp_path / "single"))
    single = {str(k): v for k, v in losses_of(str(tmp_path / "single")).items()}
    assert sorted(single) == ["1", "2", "3"]
    for shape, losses in result.items():
        np.testing.assert_allclose([losses[k] for k in single], [single[k] for k in single], rtol=2e-5, atol=2e-6,
                                   err_msg=shape)
