"""Supervised fine-tuning (completion-only NLL): lnpo's one SFT recipe.

``sft_stage(c)`` turns a run config ``c`` into its SFT stage, sized by ``c.sft`` (steps, batch, lr,
warmup): the model, data, mesh and seed stay ``c``'s. lnpo trains the embedded starting model with
it (``lnpo.train.run.sft_config_for``), and ``get_config()`` is the same recipe over the base config,
for SFT on your data::

    python -m lnpo.main --config=configs/sft.py --config.data.source=sft.jsonl --config.train.steps=300
"""

import ml_collections

from configs.base import get_base


def sft_stage(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``c`` as its SFT stage (``c`` is changed and returned)."""
    c.name = "sft"
    c.stage = "sft"
    c.loss = ml_collections.ConfigDict({"name": "nll"})
    c.train.steps = c.sft.steps
    c.train.global_batch = c.sft.global_batch
    c.train.micro_batches = 1
    c.optim.lr = c.sft.lr
    c.optim.warmup_steps = c.sft.warmup_steps
    c.optim.schedule = "cosine"
    c.data.layout = "packed"  # short SFT examples: packing wastes no compute on padding
    c.eval.enabled = False
    return c


def get_config(arg=None):  # noqa: ARG001 (big_vision's signature; this recipe has no variants)
    return sft_stage(get_base())
