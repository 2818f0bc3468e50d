"""Bradley-Terry reward model: a scalar head on the decoder trained on the preference pairs,
exported in Hugging Face ``*ForSequenceClassification`` format."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "rm"
    c.stage = "rm"
    c.loss.name = "bradley_terry"
    c.optim.lr = 1e-4
    c.train.steps = 200
    c.eval.enabled = False
    return c
