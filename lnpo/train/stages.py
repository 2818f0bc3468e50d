"""The stage table: what each training stage (``sft``, ``po``, ``rm``) is, looked up once by name.

``config.stage`` names an entry of :data:`STAGES`; the trainer, the step, the run, the evaluator and the
planner read its fields instead of testing the name:

- ``sums_fn(objective=, num_pairs=, chunk_size=, seed=)`` -> ``fn(model, mb, reference, loss_hparams)``,
  one micro-batch's :class:`lnpo.train.steps.WeightedSums` (the loss sum and its metrics' sums, plus
  their count: ``pairs``, or target ``tokens`` for SFT, the denominator of the step's mean);
- ``examples``: what a training example is: ``"sft"`` (a prompt and one completion) or ``"pairs"``
  (a prompt, a chosen and a rejected completion);
- ``num_labels``: 0 for a causal LM, 1 for a reward model's score head;
- ``objective``: trained with ``config.loss`` (an objective of :mod:`lnpo.losses`, maybe a reference);
- ``held_out_loss``: the trainer's periodic loss on the eval split (``config.train.eval_*``) applies;
- ``export_kind``: what ``export/`` holds: ``"causal_lm"`` or ``"reward_model"``;
- ``generation_eval``: the exported policy is evaluated by generation (:mod:`lnpo.evaluate`);
- ``needs_start_model``: starts from a trained model (``model.path``, else the embedded SFT model);
- ``metrics``: the metric names the stage's sums carry besides ``loss`` (``po``: its objective's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from lnpo.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    sums_fn: Callable[..., Callable]
    examples: str
    num_labels: int
    objective: bool
    held_out_loss: bool
    export_kind: str
    generation_eval: bool
    needs_start_model: bool
    metrics: tuple[str, ...] = ()


# The micro-sums builders import the step on use: the planner and the run read the table without JAX.
def _po_sums(*, objective, num_pairs: int, chunk_size: int, seed: int = 0):
    from lnpo.train import steps

    return lambda model, mb, reference, loss_hparams: steps.po_micro_sums(
        model, mb, objective=objective, hparams=loss_hparams, num_pairs=num_pairs, chunk_size=chunk_size,
        reference=reference, seed=seed)


def _sft_sums(*, objective=None, num_pairs: int, chunk_size: int, seed: int = 0):  # noqa: ARG001 (one contract)
    from lnpo.train import steps

    return lambda model, mb, reference, loss_hparams: steps.sft_micro_sums(
        model, mb, num_examples=num_pairs, chunk_size=chunk_size)


def _rm_sums(*, objective=None, num_pairs: int, chunk_size: int = 0, seed: int = 0):  # noqa: ARG001 (one contract)
    from lnpo.train import steps

    return lambda model, mb, reference, loss_hparams: steps.rm_micro_sums(model, mb, num_pairs=num_pairs)


STAGES: dict[str, Stage] = {
    "sft": Stage("sft", _sft_sums, examples="sft", num_labels=0, objective=False, held_out_loss=False,
                 export_kind="causal_lm", generation_eval=False, needs_start_model=False),
    "po": Stage("po", _po_sums, examples="pairs", num_labels=0, objective=True, held_out_loss=True,
                export_kind="causal_lm", generation_eval=True, needs_start_model=True),
    "rm": Stage("rm", _rm_sums, examples="pairs", num_labels=1, objective=False, held_out_loss=True,
                export_kind="reward_model", generation_eval=False, needs_start_model=True,
                metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")),
}


def get(name: str) -> Stage:
    """The stage named ``name`` (``config.stage``); a :class:`~lnpo.errors.ConfigError` naming the choices."""
    try:
        return STAGES[name]
    except KeyError:
        raise ConfigError(f"config.stage: unknown stage {name!r}; one of {sorted(STAGES)}") from None


def micro_sums_fn(name: str, *, objective=None, num_pairs: int, chunk_size: int, seed: int = 0) -> Callable:
    """Stage ``name``'s ``fn(model, mb, reference, loss_hparams) -> WeightedSums``; ``seed`` seeds the
    objective's token sampling (SamPO), with the step and micro-batch folded in."""
    return get(name).sums_fn(objective=objective, num_pairs=num_pairs, chunk_size=chunk_size, seed=seed)
