"""The objectives' input pytree: :class:`PairLogps` and its optional per-sequence statistics."""

from __future__ import annotations

from typing import Any, NamedTuple

NEEDS = ("shared", "sampled", "aligned", "label")
"""What an objective may ask for beyond summed log-probs (see :class:`PairLogps`)."""


class SequenceStats(NamedTuple):
    """One per-sequence statistic of a pair's four sequences, each ``[B]`` (``ref_*`` None
    where the statistic is the policy's only, or the objective is reference-free)."""

    policy_chosen: Any
    policy_rejected: Any
    ref_chosen: Any = None
    ref_rejected: Any = None


class PairLogps(NamedTuple):
    """Per-pair sequence log-probs: the input of every objective (a pytree).

    All fields have shape ``[B]``. Log-probs are summed over completion tokens
    (any float dtype; bf16 is accepted); token counts are completion lengths
    (any int or float dtype). ``ref_*`` may be ``None`` for reference-free
    objectives (see :func:`requires_reference`). The mean NLL of the chosen
    response is ``-policy_chosen / max(chosen_tokens, 1)``.

    ``valid`` (optional, ``[B]``, nonzero = a real pair): padding pairs (a
    partial last batch filled to a fixed shape) get loss 0 and are left out of
    everything that couples the batch (``aot``'s sorting, ``bco_pair``'s mean
    reward). None: every pair is real.

    Statistics beyond the sums, present only for objectives that declare them in
    their ``needs`` (:func:`needs`; None otherwise, and dropped before the trace when
    not needed), each a :class:`SequenceStats` computed by the train step from the
    per-token log-probs (``lnpo.logprobs.sequence_stats``):

    * ``shared``: sums over the first ``min(|y_w|, |y_l|)`` completion tokens of each
      sequence (LD-DPO's shared part), policy and reference;
    * ``sampled``: sums over ``min(|y_w|, |y_l|)`` completion tokens of each
      sequence drawn uniformly without replacement (SamPO), the same tokens for the
      policy and the reference;
    * ``aligned``: policy-only sums of ``log pi(y_t) - log sum_v pi(v)^2`` (WPO's
      aligned log-probs; the train step stops their gradient).

    ``label`` (``[B]``, nonzero = desirable): unpaired (KTO) batches, where
    ``*_chosen`` is the example's completion and ``*_rejected`` its KL completion
    (another example's completion under this prompt); see ``lnpo.data.unpaired``.
    """

    policy_chosen: Any
    policy_rejected: Any
    ref_chosen: Any = None
    ref_rejected: Any = None
    chosen_tokens: Any = None
    rejected_tokens: Any = None
    valid: Any = None
    shared: Any = None
    sampled: Any = None
    aligned: Any = None
    label: Any = None
