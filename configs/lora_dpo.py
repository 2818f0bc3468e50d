"""LoRA DPO: rank-16 adapters on every projection of the frozen base; the reference is the base with the
adapters off (reference.mode="base": no copy of the weights, no reference cache). docs/lora.md."""

from configs.dpo import get_config as dpo_config


def get_config():
    c = dpo_config()
    c.name = "lora_dpo"
    c.model.lora.rank = 16
    c.model.lora.alpha = 32.0
    c.reference.mode = "base"
    c.optim.lr = 1e-3  # adapters start at B = 0 and want a larger rate than full fine-tuning
    return c
