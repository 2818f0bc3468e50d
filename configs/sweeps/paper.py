"""The study's real setting: "A Practical Analysis of Human Alignment with *PO" (NAACL Findings 2025).

Preference training on one dataset, evaluation out of distribution on the other's
prompts, scored by OpenAssistant's DeBERTa reward model through the PyTorch scorer:

    python -m lnpo.sweep --config=configs/sweeps/paper.py:/ckpt/sft-hf-dir \\
        --config.reward_model=/ckpt/reward-model-deberta-v3-large-v2 \\
        --config.hh_rlhf.train=/data/hh-rlhf --config.hh_rlhf.test=/data/hh-rlhf/test.jsonl \\
        --config.pku_saferlhf.train=/data/PKU-SafeRLHF --config.pku_saferlhf.test=/data/pku-test.jsonl \\
        --workdir=runs/paper

The argument after ``:`` is the SFT checkpoint (a local Hugging Face directory):
the policy's start and the frozen reference (whose log-probs are cached once for
every run under ``<workdir>/reference_cache``). ``direction`` picks the setting:

- ``"hh_to_pku"``: train on Anthropic HH-RLHF (``hh_rlhf.train``, split
  ``hh_rlhf.train_split``; held-out pairs from ``hh_rlhf.test`` / ``test_split``),
  evaluate on PKU-SafeRLHF prompts (``pku_saferlhf.test``);
- ``"pku_to_hh"``: the reverse.

Data sources are anything :func:`lnpo.data.load_preferences` reads: a hub name
(needs network), a local snapshot directory or a file; the schema is detected
(``hh_rlhf`` transcripts, ``pku_saferlhf`` rows with ``better_response_id``). The
OOD evaluation prompts are read without a split argument (the evaluator takes a
file's rows, or a directory's / hub dataset's ``train`` split), so point the
``test`` field of the evaluation dataset at its test-split file.

Grids (the paper's exact values were not available to us offline; these are our
choice in the ranges the study and the DPO / SimPO papers use):

- DPO:    beta in {0.01, 0.05, 0.1, 0.3, 0.5}
- LN-DPO: beta in {0.5, 1, 2.5, 5, 10} -- its log-ratio is per token, about 1/|y|
  of DPO's summed one, so its betas sit ~10-50x higher (SimPO's scale)
- SimPO:  beta in {1, 2, 5, 10} x gamma in {0.5, 1, 1.5}
- learning rate {5e-7, 1e-6} for every method, seed 0: 44 runs.

Training: 1250 steps of 128 pairs (about one epoch of HH-RLHF's 160k pairs), cosine
schedule with 10% warmup, bf16 compute, full remat, packed rows up to 1024 tokens
(prompts keep their last 512), FSDP over every device. Size ``train.micro_batches``,
``mesh.shape`` and ``model.remat`` to the model and the slice (``python -m lnpo.plan``).
Evaluation: 1000 OOD prompts, one sample each (temperature 1, up to 256 new tokens),
scored by ``torch:<reward_model>``; KL to the SFT model, lengths and win rates.
"""

import ml_collections

from configs.sweeps import method, new_sweep
from lnpo.errors import ConfigError

DIRECTIONS = ("hh_to_pku", "pku_to_hh")


def _dataset(name: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"train": name, "train_split": "train", "test": name, "test_split": "test"})


def get_config(arg=None):
    c = new_sweep("paper", seeds=(0,))
    c.sft_path = arg or ""  # the SFT checkpoint: a local Hugging Face directory
    # Local directory of OpenAssistant/reward-model-deberta-v3-large-v2 (needs the torch-scorer extra).
    c.reward_model = ""
    c.direction = "hh_to_pku"  # or "pku_to_hh"
    c.hh_rlhf = _dataset("Anthropic/hh-rlhf")
    c.pku_saferlhf = _dataset("PKU-Alignment/PKU-SafeRLHF")

    lrs = (5e-7, 1e-6)
    c.methods.dpo = method("dpo", beta=(0.01, 0.05, 0.1, 0.3, 0.5), lr=lrs)
    c.methods.lndpo = method("lndpo", beta=(0.5, 1.0, 2.5, 5.0, 10.0), lr=lrs)
    c.methods.simpo = method("simpo", beta=(1.0, 2.0, 5.0, 10.0), gamma=(0.5, 1.0, 1.5), lr=lrs)

    c.overrides = {
        # Derived from sft_path / direction / the datasets / reward_model by finalize().
        "model": {"path": "", "compute_dtype": "bfloat16", "remat": "full"},
        "data": {"source": "", "split": "train", "eval_source": "", "eval_split": "test", "ood_prompts": "",
                 "max_prompt_len": 512, "max_len": 1024, "layout": "packed", "truncation": "keep_end"},
        "reference": {"mode": "cache"},
        "optim": {"schedule": "cosine", "warmup_steps": 125, "weight_decay": 0.0},
        "train": {"steps": 1250, "global_batch": 128, "micro_batches": 1, "log_every": 10, "eval_every": 250,
                  "eval_batches": 8, "checkpoint_every": 250},
        "mesh": {"shape": (1, -1, 1)},
        "eval": {"scorer": "", "max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0, "num_samples": 1,
                 "max_prompts": 1000, "batch_size": 64},
    }
    return c


def finalize(c):
    """Derive the run-config overrides from sft_path, direction, the datasets and reward_model."""
    if c.direction not in DIRECTIONS:
        raise ConfigError(f"direction: {c.direction!r} is not one of {', '.join(DIRECTIONS)}")
    if not c.sft_path:
        raise ConfigError("sft_path: the SFT checkpoint is required: --config=configs/sweeps/paper.py:/path/to/sft "
                         "(or --config.sft_path=...)")
    if c.evaluate and not c.reward_model:
        raise ConfigError("reward_model: set --config.reward_model=/path/to/reward-model-deberta-v3-large-v2 "
                         "(or --config.evaluate=false to train only)")
    train, ood = (c.hh_rlhf, c.pku_saferlhf) if c.direction == "hh_to_pku" else (c.pku_saferlhf, c.hh_rlhf)
    o = c.overrides
    o.model.path = c.sft_path
    o.data.source = train.train
    o.data.split = train.train_split
    o.data.eval_source = train.test
    o.data.eval_split = train.test_split
    o.data.ood_prompts = ood.test
    o.eval.scorer = f"torch:{c.reward_model}" if c.reward_model else ""
    return c
