"""The length remedies side by side on the embedded task: DPO, LN-DPO, LD-DPO, SamPO, WPO, SimPO, AlphaPO, KTO.

    python -m lnpo.sweep --config=configs/sweeps/length_family.py --workdir=runs/length_family

One line per method (any objective with a config file joins a sweep the same way); the grids are each
method's config defaults plus two betas where the scale is per sequence. Same budget settings as
paper_embedded.py; shrink with ``--set train.steps=20`` for a quick look.
"""

from configs.sweeps import method, new_sweep


def get_config(arg=None):
    del arg
    c = new_sweep("length_family", seeds=(0,))
    c.methods.dpo = method("dpo", beta=(0.1, 0.5), lr=(1e-4,))
    c.methods.lndpo = method("lndpo", beta=(1.0,), lr=(1e-4,))
    c.methods.ld_dpo = method("ld_dpo", beta=(0.1, 0.5), lr=(1e-4,))
    c.methods.sampo = method("sampo", beta=(0.1, 0.5), lr=(1e-4,))
    c.methods.wpo = method("wpo", beta=(0.1, 0.5), lr=(1e-4,))
    c.methods.simpo = method("simpo", beta=(2.5,), gamma=(0.5,), lr=(1e-4,))
    c.methods.alphapo = method("alphapo", beta=(2.5,), gamma=(0.5,), lr=(1e-4,))
    c.methods.kto = method("kto", beta=(0.1, 0.5), lr=(1e-4,))
    c.overrides = {
        "data": {"embedded_version": 1, "max_prompt_len": 48, "max_len": 64},  # the task v1 (short rows)
        "train": {"steps": 100, "global_batch": 32, "eval_every": 50, "eval_batches": 2, "checkpoint_every": 50},
        "eval": {"max_new_tokens": 48, "temperature": 1.0, "num_samples": 1, "max_prompts": 0},
    }
    return c
