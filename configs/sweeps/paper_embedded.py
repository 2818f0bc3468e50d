"""The study's design on the embedded task: DPO, LN-DPO and SimPO across small grids.

    python -m lnpo.sweep --config=configs/sweeps/paper_embedded.py --workdir=runs/paper_embedded

12 runs: DPO and LN-DPO with 3 betas each, SimPO with 3 betas x 2 gammas, one
learning rate (configs/base.py's 1e-4, sized for the embedded tiny model), one
seed. The embedded SFT model (configs/base.py's tiny model and SFT recipe) is
trained once into ``<workdir>/sft-embedded-*`` and is the policy's start and the
reference of every run; the reference log-probs of DPO and LN-DPO are computed
once into ``<workdir>/reference_cache``. Each run is evaluated on the embedded
task's out-of-distribution prompts (other phrasings) with the task's scorer, and
``<workdir>/report.md`` compares the methods across their grids.

Grids. The embedded task's responses are short (about 2-15 tokens), so a
per-token log-ratio (LN-DPO) is roughly a tenth of the summed one (DPO): the
LN-DPO betas are the DPO betas scaled by ~10. DPO spans the study's range
(0.01 .. 0.5); SimPO uses betas around its paper's 2-2.5 and two target margins.

Budget: designed to finish in 30 minutes on 2 CPU cores (SFT once, 1000 steps in
~4-5 minutes, then ~1.5-2.5 minutes per run including evaluation; 28 min 47 s on
a shared 2-core machine, docs/study_embedded/reading.md); shrink with e.g.
``--config.methods.dpo.beta='(0.1,)' --set train.steps=20`` for a quick look.
"""

from configs.sweeps import method, new_sweep


def get_config(arg=None):
    del arg
    c = new_sweep("paper_embedded", seeds=(0,))
    c.methods.dpo = method("dpo", beta=(0.01, 0.1, 0.5), lr=(1e-4,))
    c.methods.lndpo = method("lndpo", beta=(0.1, 1.0, 5.0), lr=(1e-4,))
    c.methods.simpo = method("simpo", beta=(1.0, 2.5, 5.0), gamma=(0.5, 1.5), lr=(1e-4,))
    c.overrides = {
        # Every rendered embedded prompt + response fits in 48 tokens: rows of 64 instead of
        # configs/base.py's 96 cut a third of the SFT, reference and training compute.
        "data": {"max_prompt_len": 48, "max_len": 64},
        "train": {"steps": 100, "global_batch": 32, "eval_every": 50, "eval_batches": 2, "checkpoint_every": 50},
        # Evaluation: every OOD prompt (200), one sample each at temperature 1 (the embedded
        # task's length effects show up on samples; see docs/embedded_task.md).
        "eval": {"max_new_tokens": 48, "temperature": 1.0, "num_samples": 1, "max_prompts": 0},
    }
    return c
