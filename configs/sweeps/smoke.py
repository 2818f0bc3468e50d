"""A tiny sweep (DPO and SimPO, 2 betas each, a few steps) on the embedded task.

Used by tests/sweep/test_sweep.py; also a quick check of a fresh install (about a
minute or two on CPU)::

    python -m lnpo.sweep --config=configs/sweeps/smoke.py --workdir=runs/smoke
"""

from configs.sweeps import method, new_sweep


def get_config(arg=None):
    del arg
    c = new_sweep("smoke", seeds=(0,))
    c.methods.dpo = method("dpo", beta=(0.1, 0.5), lr=(1e-3,))
    c.methods.simpo = method("simpo", beta=(1.0, 2.0), gamma=(0.5,), lr=(1e-3,))
    c.overrides = {
        # A very small embedded model; its SFT model is trained once for the whole sweep.
        "model": {"tiny": {"hidden_size": 32, "intermediate_size": 64, "num_layers": 2, "num_heads": 2,
                           "num_kv_heads": 1}},
        "sft": {"steps": 10, "global_batch": 16, "warmup_steps": 0},
        # The embedded task v1: short rows keep the smoke sweep quick (v2 is configs/sweeps/paper_embedded.py's).
        "data": {"embedded_version": 1, "max_prompt_len": 48, "max_len": 64},
        "optim": {"warmup_steps": 0},
        "train": {"steps": 3, "global_batch": 8, "log_every": 1, "eval_every": 1000, "eval_batches": 1,
                  "checkpoint_every": 1000},
        # Sampling settings of the evaluation (lnpo.eval_settings.EvalSettings; the sweep passes them to it).
        "eval": {"max_new_tokens": 16, "max_prompts": 8, "num_samples": 1, "batch_size": 8},
    }
    return c
