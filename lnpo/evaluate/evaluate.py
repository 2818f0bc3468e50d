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

:func:`evaluate_workdir` evaluates a trained workdir from its ``run.json``.
"""

from __future__ import annotations

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

from lnpo.errors import CheckpointError, ConfigError, DataError, InputNotFound, ModelError
from lnpo.evaluate import metrics
from lnpo.evaluate.generate import generate
from lnpo.evaluate.scorers import Scorer, make_scorer, prompt_text

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_SETTINGS", "evaluate_run", "evaluate_workdir", "load_eval_prompts", "read_run_json"]

#: Sampling / evaluation defaults (overridden by run.json's ``eval`` dict, then by arguments).
DEFAULT_SETTINGS: dict[str, Any] = {
    "max_new_tokens": 256,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "num_samples": 1,
    "seed": 0,
    "max_prompts": None,
    "batch_size": 32,
    "stop_strings": (),
    "max_prompt_len": None,
}


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


def evaluate_run(
    policy_dir: str,
    sft_dir: str | None,
    prompts_source,
    out_dir: str | None,
    *,
    scorer: Scorer | str | None,
    max_new_tokens: int = DEFAULT_SETTINGS["max_new_tokens"],
    temperature: float = DEFAULT_SETTINGS["temperature"],
    top_p: float = DEFAULT_SETTINGS["top_p"],
    top_k: int = DEFAULT_SETTINGS["top_k"],
    num_samples: int = DEFAULT_SETTINGS["num_samples"],
    seed: int = DEFAULT_SETTINGS["seed"],
    max_prompts: int | None = None,
    batch_size: int = DEFAULT_SETTINGS["batch_size"],
    stop_strings: Sequence[str] = (),
    max_prompt_len: int | None = None,
    dtype: str = "float32",
    mesh=None,
    logprob_chunk: int | None = None,
    cache_dir: str | None = None,
    plain_template=None,
) -> dict:
    """Evaluate the policy checkpoint ``policy_dir`` against ``sft_dir`` on ``prompts_source``.

    policy_dir, sft_dir: Hugging Face causal-LM directories (the tokenizer is read
    from ``policy_dir``, else ``sft_dir``); ``sft_dir=None`` skips the SFT
    comparison and the KL metrics (``None`` in the summary).
    prompts_source: a preference dataset (the embedded ``ood_prompts.jsonl`` or
    anything :func:`lnpo.data.load_preferences` reads); ``chosen`` is the reference answer.
    out_dir: where summary.json / samples.jsonl / sft_samples.jsonl go (None: not written).
    scorer: a :class:`~lnpo.evaluate.scorers.Scorer`, a spec for
    :func:`~lnpo.evaluate.scorers.make_scorer`, or None (no score metrics).
    Sampling arguments as :func:`lnpo.evaluate.generate`; ``batch_size`` rows per
    generation / log-prob batch. dtype: parameter and compute dtype of the loaded
    models; mesh: place their parameters on this mesh (``from_pretrained``);
    logprob_chunk: positions per log-softmax block (default: automatic);
    cache_dir: the ``datasets`` cache; plain_template: the training run's
    ``data.chat_template`` setting (:func:`lnpo.data.tokenize.template_for`; ``None`` = the
    tokenizer's chat template, an error for a tokenizer without one). Returns the summary dict (module docstring).
    """
    from lnpo.models.hf import read_config

    t0 = time.time()
    for d in (policy_dir, sft_dir):  # fail fast on a wrong path, before any loading
        if d:
            read_config(d)
    _check_scorer_spec(scorer)
    rows = load_eval_prompts(prompts_source, max_prompts=max_prompts, cache_dir=cache_dir)
    prompts = [r["prompt"] for r in rows]
    tokenizer = _load_tokenizer(policy_dir, sft_dir)
    gen_kw = dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                  top_k=int(top_k), num_samples=int(num_samples), seed=int(seed),
                  stop_strings=tuple(stop_strings or ()), batch_size=int(batch_size),
                  max_prompt_len=max_prompt_len, plain_template=plain_template)

    policy = _load_lm(policy_dir, dtype=dtype, mesh=mesh)
    t_gen = time.time()
    samples = generate(policy, tokenizer, prompts, **gen_kw)
    sft = sft_samples = None
    if sft_dir:
        same = os.path.realpath(sft_dir) == os.path.realpath(policy_dir)
        sft = policy if same else _load_lm(sft_dir, dtype=dtype, mesh=mesh)
        if sft.config.vocab_size != policy.config.vocab_size:
            raise ModelError(f"policy vocab {policy.config.vocab_size} != SFT vocab {sft.config.vocab_size}: "
                             "KL and log-ratios need the same tokenizer")
        sft_samples = samples if same else generate(sft, tokenizer, prompts, **gen_kw)
    gen_seconds = time.time() - t_gen

    lp = metrics.sequence_logps_and_kl(policy, sft, [s["prompt_ids"] for s in samples],
                                       [s["response_ids"] for s in samples], batch_size=int(batch_size),
                                       chunk_size=logprob_chunk)
    n_tok = lp["num_tokens"]
    has_sft = sft is not None
    del policy, sft  # free the models before a reward model is loaded
    scorer_obj = make_scorer(scorer) if not isinstance(scorer, Scorer) else scorer

    texts = [s["response_text"] for s in samples]
    sample_prompts = [prompts[s["prompt_index"]] for s in samples]
    scores = sft_scores = chosen_scores = None
    if scorer_obj is not None:
        scores = scorer_obj.score(sample_prompts, texts)
        chosen_by_prompt = scorer_obj.score(prompts, [r["chosen"] for r in rows])
        chosen_scores = np.asarray([chosen_by_prompt[s["prompt_index"]] for s in samples], np.float64)
        if sft_samples is not None:
            sft_scores = scores if sft_samples is samples else scorer_obj.score(
                [prompts[s["prompt_index"]] for s in sft_samples], [s["response_text"] for s in sft_samples])

    len_tok, len_words = _response_lengths(samples)
    summary: dict[str, Any] = {
        "status": "ok",
        "policy_dir": os.path.abspath(policy_dir),
        "sft_dir": os.path.abspath(sft_dir) if sft_dir else None,
        "prompts_source": _source_name(prompts_source),
        "scorer": getattr(scorer_obj, "spec", None) or (type(scorer_obj).__name__ if scorer_obj else None),
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in gen_kw.items() if k != "plain_template"},
        "num_prompts": len(prompts),
        "num_samples": len(samples),
    }
    summary.update(metrics.describe(scores if scores is not None else [], "score"))
    summary.update(metrics.describe(chosen_scores if chosen_scores is not None else [], "chosen_score"))
    summary.update(metrics.describe(sft_scores if sft_scores is not None else [], "sft_score"))
    summary["win_rate_vs_chosen"] = metrics.win_rate(scores, chosen_scores) if scores is not None else None
    summary["win_rate_vs_sft"] = (metrics.win_rate(scores, sft_scores)
                                  if scores is not None and sft_scores is not None else None)
    log_ratio = per_token = kl_exact = kl_exact_tok = None
    if has_sft:
        log_ratio = lp["logp_policy"] - lp["logp_sft"]
        per_token = log_ratio / n_tok
        kl_exact = lp["kl_exact"]
        kl_exact_tok = kl_exact / n_tok
    for name, values in (("kl_seq", log_ratio), ("kl_per_token", per_token), ("kl_exact", kl_exact),
                         ("kl_exact_per_token", kl_exact_tok)):
        summary.update(metrics.describe(values if values is not None else [], name))
    if has_sft:  # the estimators, spelled out (equal to the means above)
        summary["kl_seq_mean"] = metrics.kl_sequence_estimate(lp["logp_policy"], lp["logp_sft"])
        summary["kl_per_token_mean"] = metrics.kl_per_token_estimate(lp["logp_policy"], lp["logp_sft"], n_tok)
    summary.update(metrics.length_stats(len_tok, len_words))
    sft_len_tok = sft_len_words = None
    if sft_samples is not None:
        sft_len_tok, sft_len_words = _response_lengths(sft_samples)
        summary.update({f"sft_{k}": v for k, v in metrics.length_stats(sft_len_tok, sft_len_words).items()})
    else:
        summary.update({f"sft_{k}": v for k, v in metrics.length_stats([], []).items()})
    summary["logp_policy_mean"] = float(np.mean(lp["logp_policy"]))
    summary["logp_sft_mean"] = float(np.mean(lp["logp_sft"])) if has_sft else None
    summary["eos_fraction"] = float(np.mean([s["stop_reason"] == "eos" for s in samples]))
    summary["stop_reasons"] = dict(Counter(s["stop_reason"] for s in samples))
    summary["generation_seconds"] = gen_seconds
    summary["seconds"] = time.time() - t0

    records = []
    for i, s in enumerate(samples):
        rec = {
            "prompt_index": s["prompt_index"], "sample": s["sample"],
            "prompt": prompts[s["prompt_index"]], "prompt_text": prompt_text(prompts[s["prompt_index"]]),
            "response": s["response_text"], "stop_reason": s["stop_reason"],
            "length_tokens": int(len_tok[i]), "length_words": int(len_words[i]), "num_tokens": int(n_tok[i]),
            "score": None if scores is None else float(scores[i]),
            "chosen": rows[s["prompt_index"]]["chosen"],
            "chosen_score": None if chosen_scores is None else float(chosen_scores[i]),
            "logp_policy": float(lp["logp_policy"][i]),
            "logp_sft": None, "kl_seq": None, "kl_per_token": None, "kl_exact": None,
            "sft_response": None, "sft_score": None, "sft_length_tokens": None, "sft_length_words": None,
        }
        if scores is not None:
            rec["win_vs_chosen"] = float(metrics.win_rates(scores[i:i + 1], chosen_scores[i:i + 1])[0])
        if has_sft:
            rec.update(logp_sft=float(lp["logp_sft"][i]), kl_seq=float(log_ratio[i]), kl_per_token=float(per_token[i]),
                       kl_exact=float(kl_exact[i]))
            t = sft_samples[i]
            rec.update(sft_response=t["response_text"], sft_length_tokens=int(sft_len_tok[i]),
                       sft_length_words=int(sft_len_words[i]))
            if sft_scores is not None:
                rec["sft_score"] = float(sft_scores[i])
                rec["win_vs_sft"] = float(metrics.win_rates(scores[i:i + 1], sft_scores[i:i + 1])[0])
        records.append(rec)

    summary = _clean(summary)
    if out_dir is not None and jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        _write_jsonl(os.path.join(out_dir, "samples.jsonl"), records)
        if sft_samples is not None:
            _write_jsonl(os.path.join(out_dir, "sft_samples.jsonl"), [
                {"prompt_index": t["prompt_index"], "sample": t["sample"], "response": t["response_text"],
                 "stop_reason": t["stop_reason"], "length_tokens": int(sft_len_tok[i]),
                 "length_words": int(sft_len_words[i]),
                 "score": None if sft_scores is None else float(sft_scores[i])}
                for i, t in enumerate(sft_samples)])
        _write_json(os.path.join(out_dir, "summary.json"), summary)
    return summary


# ----------------------------------------------------------------------------- workdirs


def read_run_json(workdir: str) -> dict:
    """``workdir/run.json`` as a dict (FileNotFoundError / ValueError with the path)."""
    path = os.path.join(workdir, "run.json")
    if not os.path.isfile(path):
        raise InputNotFound(f"{path}: missing (a trained workdir has run.json)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from None


def evaluate_workdir(workdir: str, *, out_dir: str | None = None, **overrides) -> dict:
    """Evaluate a trained workdir; writes ``workdir/eval/{summary.json,samples.jsonl,sft_samples.jsonl}``.

    Reads ``workdir/run.json``: ``export`` (the policy; default ``workdir/export``),
    ``sft_path`` (the SFT model; null skips SFT metrics), ``eval_prompts`` (the
    prompts file), ``scorer`` (a :func:`~lnpo.evaluate.scorers.make_scorer` spec;
    ``""`` or null: no scores) and the optional ``eval`` dict of settings
    (:data:`DEFAULT_SETTINGS` keys, plus ``dtype``). ``overrides``: keyword
    arguments of :func:`evaluate_run` that take precedence (None values ignored).
    """
    run = read_run_json(workdir)
    policy = run.get("export") or os.path.join(workdir, "export")
    if not os.path.isabs(policy):
        policy = os.path.join(workdir, policy)
    prompts = overrides.pop("prompts_source", None) or run.get("eval_prompts")
    if not prompts:
        raise CheckpointError(f"{os.path.join(workdir, 'run.json')}: no eval_prompts (the OOD evaluation prompts file)")
    sft = overrides.pop("sft_dir", None) or run.get("sft_path")
    scorer = overrides.pop("scorer", None)
    if scorer is None:
        scorer = run.get("scorer") or None
    settings = dict(DEFAULT_SETTINGS)
    eval_cfg = run.get("eval") or {}
    known = set(DEFAULT_SETTINGS) | {"dtype", "logprob_chunk"}
    settings.update({k: v for k, v in eval_cfg.items() if k in known and v is not None})
    settings["plain_template"] = run.get("chat_template") or None  # the template the run trained with
    settings.update({k: v for k, v in overrides.items() if v is not None})
    out = out_dir or os.path.join(workdir, "eval")
    return evaluate_run(policy, sft, prompts, out, scorer=scorer, **settings)
