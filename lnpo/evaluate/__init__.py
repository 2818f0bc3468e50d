"""lnpo.evaluate: sampling, scoring and the run-level evaluation of a trained policy.

::

    from lnpo.evaluate import evaluate_run, evaluate_workdir, generate, make_scorer

    summary = evaluate_run("runs/x/export", "runs/sft/export", "ood_prompts.jsonl", "runs/x/eval",
                           scorer="embedded", settings=EvalSettings(max_new_tokens=64, num_samples=2))

Command line: ``python -m lnpo.evaluate --workdir=W`` (a trained workdir with
``run.json``) or ``python -m lnpo.evaluate --model=DIR --sft=DIR --prompts=FILE
--out=DIR --scorer=embedded``. See :mod:`lnpo.evaluate.evaluate` for the summary
keys, :mod:`lnpo.evaluate.metrics` for the formulas, :mod:`lnpo.evaluate.generate`
for sampling and :mod:`lnpo.evaluate.scorers` for the scorers.
"""

from lnpo.eval_settings import EvalSettings
from lnpo.evaluate.evaluate import evaluate_run, evaluate_workdir, load_eval_prompts
from lnpo.evaluate.generate import SamplingSettings, generate, generate_ids, sample_logits
from lnpo.evaluate.metrics import (
    kl_per_token_estimate,
    kl_sequence_estimate,
    sequence_logps_and_kl,
    token_logps_and_kl,
    win_rate,
    win_rates,
)
from lnpo.evaluate.scorers import EmbeddedScorer, JaxRewardModelScorer, Scorer, TorchRewardModelScorer, make_scorer

__all__ = [
    "EmbeddedScorer",
    "EvalSettings",
    "JaxRewardModelScorer",
    "SamplingSettings",
    "Scorer",
    "TorchRewardModelScorer",
    "evaluate_run",
    "evaluate_workdir",
    "generate",
    "generate_ids",
    "kl_per_token_estimate",
    "kl_sequence_estimate",
    "load_eval_prompts",
    "make_scorer",
    "sample_logits",
    "sequence_logps_and_kl",
    "token_logps_and_kl",
    "win_rate",
    "win_rates",
]
