"""The run-level evaluation pipeline: sample from the policy and the SFT model, score, compare, write.

:func:`evaluate_run` evaluates one policy checkpoint on out-of-distribution prompts
(a preference dataset whose ``chosen`` response is the reference answer):

1. load the prompts (:func:`lnpo.data.load_preferences`), the tokenizer (from the
   policy directory, else the SFT directory) and the models
   (:func:`lnpo.models.from_pretrained`);
2. sample ``num_samples`` responses per prompt from the policy and, with the same
   sampling settings and seed, from the SFT model (:func:`lnpo.evaluate.generate`);
3. log-probs of every policy sample under the policy and the SFT model, and the
   exact per-position KL along it (:func:`lnpo.evaluate.metrics.sequence_logps_and_kl`);
4. scores of the policy samples, the SFT samples and the dataset's chosen answers;
5. ``out_dir/summary.json`` (aggregates, see below), ``out_dir/samples.jsonl`` (one
   line per policy sample) and ``out_dir/sft_samples.jsonl`` (the SFT samples).

Summary keys (plain floats; ``None`` where not computable: no scorer, no SFT model):

- ``score_{mean,median,std,p10,p25,p75,p90,min,max}``: policy sample scores;
  ``sft_score_*``, ``chosen_score_*`` likewise for the SFT samples and the chosen answers;
- ``win_rate_vs_chosen``: ``mean_i (1[s_i > c_i] + 0.5 * 1[s_i == c_i])`` over
  policy samples ``i`` against their prompt's chosen answer;
- ``win_rate_vs_sft``: the same against the SFT sample with the same prompt and sample index;
- ``kl_seq_*``: statistics of the per-sample log-ratio
  ``log pi(y|x) - log pi_sft(y|x)``; ``kl_seq_mean`` is the Monte-Carlo estimate
  of KL(pi || pi_sft); ``kl_per_token_*`` of the log-ratio divided by the
  sample's token count; ``kl_exact_*`` of the exact per-position KL summed along
  the sample (see :mod:`lnpo.evaluate.metrics`); ``kl_exact_per_token_*`` of that
  divided by the token count;
- ``length_tokens_*`` / ``length_words_*``: response length in tokens (a
  terminating EOS not counted) and in whitespace-separated words;
  ``sft_length_tokens_*`` / ``sft_length_words_*`` for the SFT samples;
- ``eos_fraction`` (samples that ended with EOS), ``stop_reasons`` (counts),
  ``num_prompts``, ``num_samples``, ``settings``, paths and ``seconds``.

:func:`evaluate_workdir` evaluates a trained workdir from its ``run.json``; the settings are one
:class:`lnpo.eval_settings.EvalSettings`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lnpo import rundir
from lnpo.errors import CheckpointError, ConfigError, DataError, InputNotFound, ModelError
from lnpo.eval_settings import EvalSettings
from lnpo.evaluate import metrics, sample_cache
from lnpo.evaluate.generate import generate
from lnpo.evaluate.scorers import Scorer, make_scorer, prompt_text
from lnpo.train import stages

log = logging.getLogger(__name__)

__all__ = ["evaluate_run", "evaluate_workdir", "load_eval_prompts"]

_DEFAULT_SETTINGS = EvalSettings()  # evaluate_run's default settings (frozen, so one shared instance)


def _completion_text(messages: Any) -> str:
    """A completion's text: the contents of its messages joined with newlines (as lnpo.data.tokenize's fallback)."""
    if isinstance(messages, str):
        return messages
    return "\n".join(str(m["content"]) for m in messages)


_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv")


def load_eval_prompts(source, *, max_prompts: int | None = None, cache_dir: str | None = None) -> list[dict]:
    """``[{"prompt": messages, "chosen": text}]`` from a preference dataset (anything
    :func:`lnpo.data.load_preferences` reads), the first ``max_prompts`` rows kept."""
    from lnpo.data import load_preferences

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        looks_local = path.startswith(("/", ".", "~")) or path.endswith(_DATA_SUFFIXES)
        if looks_local and not os.path.exists(os.path.expanduser(path)):
            raise InputNotFound(f"{path}: no such prompts file or directory")
        source = os.path.expanduser(path) if looks_local else path
    ds, report = load_preferences(source, cache_dir=cache_dir)
    if max_prompts is not None:
        ds = ds.select(range(min(int(max_prompts), len(ds))))
    if len(ds) == 0:
        raise DataError(f"{source}: no usable preference rows ({report.summary()})")
    return [{"prompt": [dict(m) for m in p], "chosen": _completion_text(c)}
            for p, c in zip(ds["prompt"], ds["chosen"])]


def _load_tokenizer(*dirs: str | None):
    from lnpo.errors import ModelError
    from lnpo.models.preflight import load_tokenizer

    errors = []
    for d in dirs:
        if not d:
            continue
        try:
            return load_tokenizer(d)
        except ModelError as e:
            errors.append(str(e))
    raise ModelError("no tokenizer found in the model directories: " + "; ".join(errors))


def _load_lm(path: str, *, dtype: str, mesh):
    from lnpo.models import from_pretrained

    model = from_pretrained(path, dtype=dtype, mesh=mesh)
    if model.config.num_labels > 0:
        raise ModelError(f"{path}: a sequence-classification model, not a causal LM")
    return model


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    return x


def _write_jsonl(path: str, rows: Sequence[Mapping]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _write_json(path: str, obj: Mapping) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_clean(obj), f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _check_scorer_spec(scorer) -> None:
    """Fail early on a malformed scorer spec or a missing reward-model directory (it is loaded later)."""
    from lnpo.data.embedded import scorer_version

    if scorer is None or isinstance(scorer, Scorer) or scorer == "" or scorer_version(str(scorer)) is not None:
        return
    kind, _, path = str(scorer).partition(":")
    if kind not in ("jax", "torch") or not path:
        raise ConfigError(f"unknown scorer spec {scorer!r}: expected 'embedded', 'embedded-v2', 'jax:/path/to/rm' "
                          "or 'torch:/path/to/rm'")
    if not os.path.isdir(os.path.expanduser(path)):
        raise InputNotFound(f"scorer {scorer!r}: {path} is not a directory")


def _source_name(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return os.path.abspath(path) if os.path.exists(path) else path
    return "<in memory>"


def _response_lengths(samples: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.asarray([len(s["response_ids"]) - (1 if s["stop_reason"] == "eos" else 0) for s in samples],
                        np.float64)
    words = np.asarray([metrics.word_count(s["response_text"]) for s in samples], np.float64)
    return tokens, words


@dataclasses.dataclass
class _Sampled:
    """The samples of one evaluation: the policy's, the SFT model's (None: no SFT model; the same list when
    the SFT model is the policy's directory) and their log-probs and KL (:func:`metrics.sequence_logps_and_kl`)."""

    samples: list
    sft_samples: list | None
    logps: dict
    has_sft: bool
    seconds: float


@dataclasses.dataclass
class _Scores:
    """Scores of the policy samples, the SFT samples and each sample's chosen answer (None: no scorer)."""

    policy: np.ndarray | None = None
    sft: np.ndarray | None = None
    chosen: np.ndarray | None = None
    spec: str | None = None


def evaluate_run(policy_dir: str, sft_dir: str | None, prompts_source, out_dir: str | None, *,
                 scorer: Scorer | str | None, settings: EvalSettings = _DEFAULT_SETTINGS, mesh=None,
                 cache_dir: str | None = None, plain_template=None, sft_samples_dir: str | None = None) -> dict:
    """Evaluate the policy checkpoint ``policy_dir`` against ``sft_dir`` on ``prompts_source``.

    policy_dir, sft_dir: Hugging Face causal-LM directories (the tokenizer is read
    from ``policy_dir``, else ``sft_dir``); ``sft_dir=None`` skips the SFT
    comparison and the KL metrics (``None`` in the summary).
    prompts_source: a preference dataset (the embedded ``ood_prompts.jsonl`` or
    anything :func:`lnpo.data.load_preferences` reads); ``chosen`` is the reference answer.
    out_dir: where summary.json / samples.jsonl / sft_samples.jsonl go (None: not written).
    scorer: a :class:`~lnpo.evaluate.scorers.Scorer`, a spec for
    :func:`~lnpo.evaluate.scorers.make_scorer`, or None (no score metrics).
    settings: sampling, batching and numerics (:class:`lnpo.eval_settings.EvalSettings`);
    mesh: place the models' parameters on this mesh (``from_pretrained``);
    cache_dir: the ``datasets`` cache; plain_template: the training run's
    ``data.chat_template`` setting (:func:`lnpo.data.tokenize.template_for`; ``None`` = the
    tokenizer's chat template, an error for a tokenizer without one); sft_samples_dir: keep the SFT model's
    samples there and reuse them when the same model, tokenizer, prompts and settings come again
    (:mod:`lnpo.evaluate.sample_cache`; a sweep passes its own directory; None = always sample).
    Returns the summary dict (module docstring).
    """
    t0 = time.time()
    _check_inputs(policy_dir, sft_dir, scorer)
    rows = load_eval_prompts(prompts_source, max_prompts=settings.max_prompts or None, cache_dir=cache_dir)
    prompts = [r["prompt"] for r in rows]
    gen_kw = _generation_kwargs(settings, plain_template)
    sampled = _sample(policy_dir, sft_dir, prompts, settings, gen_kw, mesh, sft_samples_dir)
    scores = _score(scorer, prompts, rows, sampled)
    summary = _summary(policy_dir, sft_dir, prompts_source, prompts, sampled, scores, gen_kw)
    summary["seconds"] = time.time() - t0
    summary = _clean(summary)
    if out_dir is not None and jax.process_index() == 0:
        _write_outputs(out_dir, summary, _sample_records(prompts, rows, sampled, scores), sampled, scores)
    return summary


def _check_inputs(policy_dir: str, sft_dir: str | None, scorer) -> None:
    """Fail fast on a wrong model path or scorer spec, before any loading."""
    from lnpo.models.hf_config import read_config

    for d in (policy_dir, sft_dir):
        if d:
            read_config(d)
    _check_scorer_spec(scorer)


def _generation_kwargs(settings: EvalSettings, plain_template) -> dict:
    """:func:`lnpo.evaluate.generate`'s keyword arguments for ``settings``."""
    return dict(max_new_tokens=settings.max_new_tokens, temperature=float(settings.temperature),
                top_p=float(settings.top_p), top_k=settings.top_k, num_samples=settings.num_samples,
                seed=settings.seed, stop_strings=tuple(settings.stop_strings), batch_size=settings.batch_size,
                max_prompt_len=settings.max_prompt_len, plain_template=plain_template)


def _sample(policy_dir: str, sft_dir: str | None, prompts: list, settings: EvalSettings, gen_kw: dict,
            mesh, sft_samples_dir: str | None = None) -> _Sampled:
    """Sample from the policy and (same settings and seed) the SFT model, whose samples come from
    ``sft_samples_dir`` when it has them; log-probs and KL of the policy's samples under both. The models are
    freed before returning (a reward model may be loaded next)."""
    tokenizer = _load_tokenizer(policy_dir, sft_dir)
    policy = _load_lm(policy_dir, dtype=settings.dtype, mesh=mesh)
    t_gen = time.time()
    samples = generate(policy, tokenizer, prompts, **gen_kw)
    sft = sft_samples = None
    if sft_dir:
        same = os.path.realpath(sft_dir) == os.path.realpath(policy_dir)
        sft = policy if same else _load_lm(sft_dir, dtype=settings.dtype, mesh=mesh)
        if sft.config.vocab_size != policy.config.vocab_size:
            raise ModelError(f"policy vocab {policy.config.vocab_size} != SFT vocab {sft.config.vocab_size}: "
                             "KL and log-ratios need the same tokenizer")
        if same:
            sft_samples = samples
        elif sft_samples_dir is None:
            sft_samples = generate(sft, tokenizer, prompts, **gen_kw)
        else:
            key = sample_cache.cache_key(sft_dir, tokenizer, prompts, {**gen_kw, "dtype": settings.dtype},
                                         memo_dir=sft_samples_dir)
            sft_samples, _ = sample_cache.load_or_sample(
                sft_samples_dir, key, len(samples), lambda: generate(sft, tokenizer, prompts, **gen_kw),
                is_writer=jax.process_index() == 0)
    seconds = time.time() - t_gen
    logps = metrics.sequence_logps_and_kl(policy, sft, [s["prompt_ids"] for s in samples],
                                          [s["response_ids"] for s in samples], batch_size=settings.batch_size,
                                          chunk_size=settings.logprob_chunk or None)
    return _Sampled(samples, sft_samples, logps, has_sft=sft is not None, seconds=seconds)


def _score(scorer, prompts: list, rows: list, sampled: _Sampled) -> _Scores:
    """Scores of the policy samples, the chosen answers and the SFT samples (an empty :class:`_Scores`
    without a scorer)."""
    scorer_obj = make_scorer(scorer) if not isinstance(scorer, Scorer) else scorer
    if scorer_obj is None:
        return _Scores()
    samples, sft_samples = sampled.samples, sampled.sft_samples
    policy = scorer_obj.score([prompts[s["prompt_index"]] for s in samples], [s["response_text"] for s in samples])
    chosen_by_prompt = scorer_obj.score(prompts, [r["chosen"] for r in rows])
    chosen = np.asarray([chosen_by_prompt[s["prompt_index"]] for s in samples], np.float64)
    sft = None
    if sft_samples is not None:
        sft = policy if sft_samples is samples else scorer_obj.score(
            [prompts[s["prompt_index"]] for s in sft_samples], [s["response_text"] for s in sft_samples])
    return _Scores(policy, sft, chosen, spec=getattr(scorer_obj, "spec", None) or type(scorer_obj).__name__)


def _kl_values(sampled: _Sampled) -> dict:
    """Per-sample ``kl_seq``, ``kl_per_token``, ``kl_exact``, ``kl_exact_per_token`` (None without an SFT model)."""
    lp, n_tok = sampled.logps, sampled.logps["num_tokens"]
    if not sampled.has_sft:
        return dict.fromkeys(("kl_seq", "kl_per_token", "kl_exact", "kl_exact_per_token"))
    log_ratio = lp["logp_policy"] - lp["logp_sft"]
    return {"kl_seq": log_ratio, "kl_per_token": log_ratio / n_tok, "kl_exact": lp["kl_exact"],
            "kl_exact_per_token": lp["kl_exact"] / n_tok}


def _summary(policy_dir, sft_dir, prompts_source, prompts, sampled: _Sampled, scores: _Scores, gen_kw) -> dict:
    """The summary's aggregates (module docstring), before JSON cleaning."""
    samples, lp = sampled.samples, sampled.logps
    summary: dict[str, Any] = {
        "status": "ok",
        "policy_dir": os.path.abspath(policy_dir),
        "sft_dir": os.path.abspath(sft_dir) if sft_dir else None,
        "prompts_source": _source_name(prompts_source),
        "scorer": scores.spec,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in gen_kw.items() if k != "plain_template"},
        "num_prompts": len(prompts),
        "num_samples": len(samples),
    }
    for name, values in (("score", scores.policy), ("chosen_score", scores.chosen), ("sft_score", scores.sft)):
        summary.update(metrics.describe(values if values is not None else [], name))
    summary["win_rate_vs_chosen"] = (metrics.win_rate(scores.policy, scores.chosen)
                                     if scores.policy is not None else None)
    summary["win_rate_vs_sft"] = (metrics.win_rate(scores.policy, scores.sft)
                                  if scores.policy is not None and scores.sft is not None else None)
    for name, values in _kl_values(sampled).items():
        summary.update(metrics.describe(values if values is not None else [], name))
    if sampled.has_sft:  # the estimators, spelled out (equal to the means above)
        summary["kl_seq_mean"] = metrics.kl_sequence_estimate(lp["logp_policy"], lp["logp_sft"])
        summary["kl_per_token_mean"] = metrics.kl_per_token_estimate(lp["logp_policy"], lp["logp_sft"],
                                                                     lp["num_tokens"])
    summary.update(metrics.length_stats(*_response_lengths(samples)))
    sft_lengths = _response_lengths(sampled.sft_samples) if sampled.sft_samples is not None else ([], [])
    summary.update({f"sft_{k}": v for k, v in metrics.length_stats(*sft_lengths).items()})
    summary["logp_policy_mean"] = float(np.mean(lp["logp_policy"]))
    summary["logp_sft_mean"] = float(np.mean(lp["logp_sft"])) if sampled.has_sft else None
    summary["eos_fraction"] = float(np.mean([s["stop_reason"] == "eos" for s in samples]))
    summary["stop_reasons"] = dict(Counter(s["stop_reason"] for s in samples))
    summary["generation_seconds"] = sampled.seconds
    return summary


def _sample_records(prompts, rows, sampled: _Sampled, scores: _Scores) -> list[dict]:
    """One ``samples.jsonl`` line per policy sample (with its SFT counterpart, if any)."""
    samples, lp = sampled.samples, sampled.logps
    len_tok, len_words = _response_lengths(samples)
    kl = _kl_values(sampled)
    if sampled.sft_samples is not None:
        sft_len_tok, sft_len_words = _response_lengths(sampled.sft_samples)
    records = []
    for i, s in enumerate(samples):
        rec = {
            "prompt_index": s["prompt_index"], "sample": s["sample"],
            "prompt": prompts[s["prompt_index"]], "prompt_text": prompt_text(prompts[s["prompt_index"]]),
            "response": s["response_text"], "stop_reason": s["stop_reason"],
            "length_tokens": int(len_tok[i]), "length_words": int(len_words[i]),
            "num_tokens": int(lp["num_tokens"][i]),
            "score": None if scores.policy is None else float(scores.policy[i]),
            "chosen": rows[s["prompt_index"]]["chosen"],
            "chosen_score": None if scores.chosen is None else float(scores.chosen[i]),
            "logp_policy": float(lp["logp_policy"][i]),
            "logp_sft": None, "kl_seq": None, "kl_per_token": None, "kl_exact": None,
            "sft_response": None, "sft_score": None, "sft_length_tokens": None, "sft_length_words": None,
        }
        if scores.policy is not None:
            rec["win_vs_chosen"] = float(metrics.win_rates(scores.policy[i:i + 1], scores.chosen[i:i + 1])[0])
        if sampled.has_sft:
            rec.update(logp_sft=float(lp["logp_sft"][i]), kl_seq=float(kl["kl_seq"][i]),
                       kl_per_token=float(kl["kl_per_token"][i]), kl_exact=float(kl["kl_exact"][i]))
            t = sampled.sft_samples[i]
            rec.update(sft_response=t["response_text"], sft_length_tokens=int(sft_len_tok[i]),
                       sft_length_words=int(sft_len_words[i]))
            if scores.sft is not None:
                rec["sft_score"] = float(scores.sft[i])
                rec["win_vs_sft"] = float(metrics.win_rates(scores.policy[i:i + 1], scores.sft[i:i + 1])[0])
        records.append(rec)
    return records


def _write_outputs(out_dir: str, summary: dict, records: list[dict], sampled: _Sampled, scores: _Scores) -> None:
    """``summary.json``, ``samples.jsonl`` and (with an SFT model) ``sft_samples.jsonl`` in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    _write_jsonl(rundir.samples_path(out_dir), records)
    if sampled.sft_samples is not None:
        sft_len_tok, sft_len_words = _response_lengths(sampled.sft_samples)
        _write_jsonl(rundir.samples_path(out_dir, sft=True), [
            {"prompt_index": t["prompt_index"], "sample": t["sample"], "response": t["response_text"],
             "stop_reason": t["stop_reason"], "length_tokens": int(sft_len_tok[i]),
             "length_words": int(sft_len_words[i]),
             "score": None if scores.sft is None else float(scores.sft[i])}
            for i, t in enumerate(sampled.sft_samples)])
    _write_json(rundir.summary_path(out_dir), summary)


# ----------------------------------------------------------------------------- workdirs


def evaluate_workdir(workdir: str, *, out_dir: str | None = None, settings: EvalSettings | None = None,
                     scorer: Scorer | str | None = None, sft_dir: str | None = None, prompts_source=None,
                     plain_template=None, mesh=None, cache_dir: str | None = None, sft_samples_dir: str | None = None,
                     **setting_changes) -> dict:
    """Evaluate a trained workdir; writes its eval directory (:mod:`lnpo.rundir`: summary.json, samples.jsonl,
    sft_samples.jsonl).

    Reads ``run.json`` (:class:`lnpo.rundir.RunInfo`): ``export`` (the policy; default the workdir's export
    directory), ``sft_path`` (the SFT model; null skips SFT metrics), ``eval_prompts`` (the prompts file),
    ``scorer`` (a :func:`~lnpo.evaluate.scorers.make_scorer` spec; ``""``: no scores), ``chat_template`` and
    ``eval`` (:class:`~lnpo.eval_settings.EvalSettings`). ``settings`` replaces run.json's settings (a sweep
    passes its config's); ``setting_changes`` (EvalSettings fields, None values ignored: unset flags) change
    single fields; ``scorer``, ``sft_dir``, ``prompts_source`` and ``plain_template`` replace run.json's
    when given; ``sft_samples_dir`` as :func:`evaluate_run`'s.
    """
    run = rundir.read_run_info(workdir)
    if stages.get(run.stage).export_kind != "causal_lm":
        raise ConfigError(f"{rundir.run_json(workdir)}: a {run.stage!r} run exports a "
                          f"{stages.get(run.stage).export_kind.replace('_', ' ')}, not a policy to sample from")
    policy = run.export or rundir.export_dir(workdir)
    if not os.path.isabs(policy):
        policy = os.path.join(workdir, policy)
    prompts = prompts_source or run.eval_prompts
    if not prompts:
        raise CheckpointError(f"{rundir.run_json(workdir)}: no eval_prompts (the OOD evaluation prompts file)")
    settings = (settings or run.eval).replace(**setting_changes)
    return evaluate_run(policy, sft_dir or run.sft_path, prompts, out_dir or rundir.eval_dir(workdir),
                        scorer=scorer if scorer is not None else (run.scorer or None), settings=settings,
                        plain_template=plain_template or run.chat_template or None, mesh=mesh, cache_dir=cache_dir,
                        sft_samples_dir=sft_samples_dir)
