"""KTO on unpaired data (desirable / undesirable examples, batch KL baseline): see lnpo.losses.kto.

Preference data (the embedded task, or any preference schema) is unpaired as TRL does it (each chosen
desirable, each rejected undesirable); set data.schema = "unpaired" for prompt / completion / label rows
(TRL's unpaired format). See lnpo.data.unpaired."""

from configs.base import get_base


def get_config():
    c = get_base()
    c.name = "kto"
    c.loss.name = "kto"
    c.loss.beta = 0.1
    c.loss.desirable_weight = 1.0
    c.loss.undesirable_weight = 1.0
    return c
