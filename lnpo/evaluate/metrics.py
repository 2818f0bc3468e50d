"""Evaluation metrics: win rates, KL estimators, length statistics; and the chunked exact KL in JAX.

Notation: ``x`` a prompt, ``y = (y_1 .. y_n)`` a response sampled from the
policy ``pi``, ``pi_sft`` the SFT (reference) model, ``n = |y|`` its token count
(including the EOS token when one was generated).

Win rate (:func:`win_rate`) of scores ``a_i`` against paired scores ``b_i``::

    win_rate = (1/N) * sum_i ( 1[a_i > b_i] + 0.5 * 1[a_i == b_i] )

KL(pi || pi_sft) estimators on policy samples ``y_i ~ pi(.|x_i)``, ``i = 1..N``:

- sequence Monte-Carlo (:func:`kl_sequence_estimate`), unbiased for the KL of
  the sequence distributions when samples are drawn from ``pi`` itself
  (temperature 1, no top-k / top-p)::

      kl_seq = (1/N) * sum_i [ log pi(y_i|x_i) - log pi_sft(y_i|x_i) ]

- per-token normalized (:func:`kl_per_token_estimate`)::

      kl_per_token = (1/N) * sum_i [ log pi(y_i|x_i) - log pi_sft(y_i|x_i) ] / n_i

- exact per-position (:func:`token_logps_and_kl`): along each sample, the full
  KL over the vocabulary at every response position, summed::

      kl_exact_i = sum_{t=1..n_i} sum_v pi(v|x_i,y_<t) * [log pi(v|x_i,y_<t) - log pi_sft(v|x_i,y_<t)]

  By the chain rule ``E_{y~pi}[kl_exact] = KL(pi(.|x) || pi_sft(.|x))`` over
  sequences too, with a lower variance than ``kl_seq``; every term is >= 0.

``log pi`` is always the model's own (temperature 1, unfiltered) distribution,
whatever the sampling settings; with temperature != 1 or top-k / top-p the
samples do not come from ``pi`` and the estimates are the corresponding
expectations under the sampling distribution.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "describe",
    "kl_per_token_estimate",
    "kl_sequence_estimate",
    "length_stats",
    "sequence_logps_and_kl",
    "token_logps_and_kl",
    "win_rate",
    "win_rates",
    "word_count",
]


# ----------------------------------------------------------------------------- win rates


def win_rates(scores_a, scores_b) -> np.ndarray:
    """Per-pair outcome float64 ``[N]``: 1 where ``a > b``, 0.5 where ``a == b``, 0 where ``a < b``."""
    a = np.asarray(scores_a, np.float64).reshape(-1)
    b = np.asarray(scores_b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"win rate needs paired scores: {a.shape[0]} vs {b.shape[0]}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("win rate: scores contain NaN")
    return (a > b).astype(np.float64) + 0.5 * (a == b)


def win_rate(scores_a, scores_b) -> float:
    """``(1/N) sum_i (1[a_i > b_i] + 0.5 * 1[a_i == b_i])``: the fraction of pairs a wins, ties counted half.

    NaN for no pairs; ``ValueError`` for unpaired lengths or NaN scores.
    """
    w = win_rates(scores_a, scores_b)
    return float(w.mean()) if w.size else float("nan")


# ----------------------------------------------------------------------------- KL estimators


def kl_sequence_estimate(logp_policy, logp_sft) -> float:
    """``mean_i [log pi(y_i|x_i) - log pi_sft(y_i|x_i)]`` over policy samples (sequence log-prob sums)."""
    lp = np.asarray(logp_policy, np.float64)
    lq = np.asarray(logp_sft, np.float64)
    return float(np.mean(lp - lq)) if lp.size else float("nan")


def kl_per_token_estimate(logp_policy, logp_sft, num_tokens) -> float:
    """``mean_i [log pi(y_i|x_i) - log pi_sft(y_i|x_i)] / n_i``: each sample's log-ratio divided by its token count."""
    lp = np.asarray(logp_policy, np.float64)
    lq = np.asarray(logp_sft, np.float64)
    n = np.asarray(num_tokens, np.float64)
    if np.any(n <= 0):
        raise ValueError("kl_per_token_estimate: every sample needs at least one token")
    return float(np.mean((lp - lq) / n)) if lp.size else float("nan")


# ----------------------------------------------------------------------------- lengths / summaries


def word_count(text: str) -> int:
    """Whitespace-separated words."""
    return len(text.split())


def describe(values, prefix: str) -> dict[str, float | None]:
    """``{prefix_mean, prefix_median, prefix_std, prefix_p10, prefix_p25, prefix_p75, prefix_p90, prefix_min,
    prefix_max}`` (population std; ``None`` for no values)."""
    x = np.asarray(values, np.float64).reshape(-1)
    keys = ("mean", "median", "std", "p10", "p25", "p75", "p90", "min", "max")
    if x.size == 0:
        return {f"{prefix}_{k}": None for k in keys}
    vals = (x.mean(), np.median(x), x.std(), *np.percentile(x, [10, 25, 75, 90]), x.min(), x.max())
    return {f"{prefix}_{k}": float(v) for k, v in zip(keys, vals)}


def length_stats(token_lengths, word_lengths) -> dict[str, float | None]:
    """Mean, median, std, quartiles and 10th/90th percentiles of response lengths in tokens and in words."""
    return {**describe(token_lengths, "length_tokens"), **describe(word_lengths, "length_words")}


# ----------------------------------------------------------------------------- exact KL (JAX)


def _chunk_fn(unembed_p: Callable, unembed_q: Callable):
    def f(hp_BxCxD, hq_BxCxD, t_BxC):
        lp = jax.nn.log_softmax(unembed_p(hp_BxCxD).astype(jnp.float32), axis=-1)  # [B, C, V]
        lq = jax.nn.log_softmax(unembed_q(hq_BxCxD).astype(jnp.float32), axis=-1)
        if lp.shape[-1] != lq.shape[-1]:
            raise ValueError(f"policy and SFT vocabularies differ: {lp.shape[-1]} vs {lq.shape[-1]}")
        kl = jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)
        tp = jnp.take_along_axis(lp, t_BxC[..., None], axis=-1)[..., 0]
        tq = jnp.take_along_axis(lq, t_BxC[..., None], axis=-1)[..., 0]
        return tp, tq, kl

    return f


def token_logps_and_kl(
    hidden_p_BxTxD: jax.Array,
    unembed_p: Callable[[jax.Array], jax.Array],
    hidden_q_BxTxD: jax.Array,
    unembed_q: Callable[[jax.Array], jax.Array],
    targets_BxT: jax.Array,
    *,
    chunk_size: int = 128,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per position, float32 ``[B, T]`` each: ``log p(target)``, ``log q(target)`` and
    ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` of the two models' next-token distributions.

    The sequence is processed ``chunk_size`` positions at a time (``jax.lax.map``),
    so at most two ``[B, chunk, V]`` float32 log-softmax blocks exist at once.
    """
    B, T, _ = hidden_p_BxTxD.shape
    C = max(1, min(int(chunk_size), T))
    n = -(-T // C)
    pad = n * C - T
    targets = jnp.pad(jnp.asarray(targets_BxT, jnp.int32), ((0, 0), (0, pad)))

    def chunks(h):
        h = jnp.pad(h, ((0, 0), (0, pad), (0, 0)))
        return h.reshape(B, n, C, h.shape[-1]).transpose(1, 0, 2, 3)

    f = _chunk_fn(unembed_p, unembed_q)
    t_chunks = targets.reshape(B, n, C).transpose(1, 0, 2)
    outs = jax.lax.map(lambda xs: f(*xs), (chunks(hidden_p_BxTxD), chunks(hidden_q_BxTxD), t_chunks))
    return tuple(o.transpose(1, 0, 2).reshape(B, n * C)[:, :T] for o in outs)


@functools.partial(jax.jit, static_argnames=("graph_p", "graph_q", "chunk_size"))
def _pair_scores(graph_p, state_p, graph_q, state_q, input_ids, positions, segment_ids, targets, mask, *,
                 chunk_size: int):
    from flax import nnx

    mp = nnx.merge(graph_p, state_p)
    hp = mp.hidden_states(input_ids, positions=positions, segment_ids=segment_ids)
    if graph_q is None:
        from lnpo.logprobs import token_logps

        tp = token_logps(hp, targets, mp.unembed, chunk_size=chunk_size)
        return jnp.sum(jnp.where(mask, tp, 0.0), axis=1), None, None
    mq = nnx.merge(graph_q, state_q)
    hq = mq.hidden_states(input_ids, positions=positions, segment_ids=segment_ids)
    tp, tq, kl = token_logps_and_kl(hp, mp.unembed, hq, mq.unembed, targets, chunk_size=chunk_size)
    s = lambda x: jnp.sum(jnp.where(mask, x, 0.0), axis=1)  # noqa: E731
    return s(tp), s(tq), s(kl)


def sequence_logps_and_kl(
    policy,
    sft,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    chunk_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Sequence log-probs of each response given its prompt under ``policy`` (and ``sft``), and the exact KL.

    Returns float64 arrays ``[N]``: ``logp_policy`` (``sum_t log pi(y_t|x, y_<t)``),
    ``num_tokens`` (n_i) and, when ``sft`` is given, ``logp_sft`` and ``kl_exact``
    (:func:`token_logps_and_kl` summed over the response positions). Rows are laid
    out with :func:`lnpo.data.layout_sft` (``"padded"``: one right-padded
    prompt + response per row, padded to :func:`lnpo.evaluate.generate.bucket_length`)
    in batches of ``batch_size`` rows of similar length. ``chunk_size``: positions
    per log-softmax block (default: as many as keep one ``[batch, chunk, vocab]``
    float32 block under 2**26 elements, at most 128).
    """
    from flax import nnx

    from lnpo.data.layouts import layout_sft
    from lnpo.evaluate.generate import bucket_length

    n = len(prompt_ids)
    if len(response_ids) != n:
        raise ValueError(f"{n} prompts but {len(response_ids)} responses")
    out = {"logp_policy": np.zeros(n), "num_tokens": np.zeros(n)}
    if sft is not None:
        out.update(logp_sft=np.zeros(n), kl_exact=np.zeros(n))
    if n == 0:
        return out
    gp, sp = nnx.split(policy)
    gq, sq = nnx.split(sft) if sft is not None else (None, None)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    order = sorted(range(n), key=lambda i: lengths[i])
    B = min(int(batch_size), n)
    if chunk_size is None:
        chunk_size = int(min(128, max(1, (1 << 26) // (B * int(policy.config.vocab_size)))))
    for start in range(0, n, B):
        idx = order[start:start + B]
        T = bucket_length(max(lengths[i] for i in idx))
        rows = layout_sft([{"prompt_ids": list(prompt_ids[i]), "completion_ids": list(response_ids[i])} for i in idx],
                          "padded", T, num_rows=B)
        mask = rows["seq_index"] >= 0
        lp, lq, kl = _pair_scores(gp, sp, gq, sq, rows["input_ids"], rows["positions"], rows["segment_ids"],
                                  rows["targets"], mask, chunk_size=int(chunk_size))
        lp = np.asarray(jax.device_get(lp), np.float64)
        counts = mask.sum(axis=1)
        for b, i in enumerate(idx):
            out["logp_policy"][i] = lp[b]
            out["num_tokens"][i] = counts[b]
        if sft is not None:
            lq = np.asarray(jax.device_get(lq), np.float64)
            kl = np.asarray(jax.device_get(kl), np.float64)
            for b, i in enumerate(idx):
                out["logp_sft"][i] = lq[b]
                out["kl_exact"][i] = kl[b]
    return out
