"""Supervised fine-tuning (completion-only NLL) on the configured SFT data."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "sft"
    c.stage = "sft"
    c.loss.name = "nll"
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 20
    c.train.steps = 300
    c.train.global_batch = 64
    c.eval.enabled = False
    return c
