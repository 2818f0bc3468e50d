"""``python -m lnpo.evaluate``: evaluate a trained workdir or any Hugging Face checkpoint.

::

    python -m lnpo.evaluate --workdir=runs/lndpo            # reads runs/lndpo/run.json, writes runs/lndpo/eval/
    python -m lnpo.evaluate --model=DIR --sft=DIR --prompts=ood.jsonl --out=DIR --scorer=embedded

Sampling flags left unset fall back to run.json's ``eval`` dict (workdir mode),
then to :class:`lnpo.eval_settings.EvalSettings`'s defaults.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lnpo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", help="a trained workdir (run.json, export/); output goes to WORKDIR/eval")
    p.add_argument("--model", help="policy: a Hugging Face causal-LM directory (with its tokenizer)")
    p.add_argument("--sft", help="SFT model directory to compare with (win rate vs SFT, KL)")
    p.add_argument("--prompts", help="evaluation prompts: a preference dataset whose chosen is the reference")
    p.add_argument("--out", help="output directory (summary.json, samples.jsonl, sft_samples.jsonl)")
    p.add_argument("--scorer", help="'embedded', 'jax:/path/to/rm' or 'torch:/path/to/rm' ('' = no scores)")
    p.add_argument("--max_new_tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top_p", type=float)
    p.add_argument("--top_k", type=int)
    p.add_argument("--num_samples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--max_prompts", type=int)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--max_prompt_len", type=int)
    p.add_argument("--stop", action="append", dest="stop_strings", help="a stop string (repeatable)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"))
    p.add_argument("--chat_template", dest="plain_template",
                   help="as the training config's data.chat_template: 'plain' or a user-turn format with {content} "
                        "for a tokenizer without a chat template (workdir mode: run.json's)")
    return p


def main(argv=None) -> int:
    from lnpo.cli import exit_status

    return exit_status("lnpo.evaluate", _main, argv)


def _main(argv=None) -> int:
    args = _parser().parse_args(argv)
    changes = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples",
                                             "seed", "max_prompts", "batch_size", "max_prompt_len",
                                             "stop_strings", "dtype")}
    from lnpo.errors import ConfigError
    from lnpo.eval_settings import EvalSettings
    from lnpo.evaluate.evaluate import evaluate_run, evaluate_workdir

    if args.workdir:
        if args.model or args.out:
            raise ConfigError("--workdir excludes --model and --out")
        summary = evaluate_workdir(args.workdir, scorer=args.scorer, sft_dir=args.sft, prompts_source=args.prompts,
                                   plain_template=args.plain_template, **changes)
    else:
        missing = [f"--{k}" for k in ("model", "prompts", "out") if not getattr(args, k)]
        if missing:
            raise ConfigError(f"without --workdir, {', '.join(missing)} required")
        summary = evaluate_run(args.model, args.sft, args.prompts, args.out, scorer=args.scorer or None,
                               settings=EvalSettings().replace(**changes), plain_template=args.plain_template)
    keys = ("score_mean", "score_median", "win_rate_vs_chosen", "win_rate_vs_sft", "kl_seq_mean",
            "kl_per_token_mean", "kl_exact_mean", "length_tokens_mean", "length_words_mean")
    print(json.dumps({k: summary.get(k) for k in keys}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
