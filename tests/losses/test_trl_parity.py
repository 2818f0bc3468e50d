"""lnpo's objectives against TRL 1.16's own loss code, on the same per-token log-probs.

TRL's loss code lives inside its trainers' ``_compute_loss`` / ``cpo_loss``, which run a model. The tests
call those methods unbound, with a stand-in ``self`` carrying exactly the attributes the method reads and a
stand-in model returning given per-token log-probs (TRL's fused-head outputs), so what runs is TRL's code,
nothing reimplemented. lnpo's side goes through the step's own statistics (``steps.pair_statistics``, the
LD-DPO prefix masks and WPO's aligned sums) from the same per-token arrays, then the objective; losses and
gradients with respect to the policy's per-token log-probs are compared. Where lnpo deliberately differs,
the test says how and checks by how much.
"""

from __future__ import annotations

import types
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
trl = pytest.importorskip("trl")

from lnpo import logprobs, losses  # noqa: E402
from lnpo.train import steps  # noqa: E402

B, P, T = 6, 3, 9  # pairs, prompt tokens, longest completion


def _accelerator():
    return types.SimpleNamespace(device="cpu", gather_for_metrics=lambda x: x, gather=lambda x: x,
                                 unwrap_model=lambda m: m)


class FakeModel(torch.nn.Module):
    """Stands in for a causal LM called with TRL's fused head: returns the given per-token outputs, looked up by
    the identity of ``input_ids`` (KTO calls the model on its completions and on its KL completions). A torch
    module, so TRL's checks that inspect it (accelerate's ``is_peft_model`` when peft is installed) see one."""

    is_gradient_checkpointing = False

    def __init__(self, outputs: dict):
        super().__init__()
        self.outputs = outputs  # id(input_ids) -> (log_probs, log_sum_sq_probs)

    def forward(self, input_ids=None, labels=None, **kwargs):
        log_probs, log_sum_sq = self.outputs[id(input_ids)]
        zeros = torch.zeros_like(log_probs)
        return types.SimpleNamespace(log_probs=log_probs, log_sum_sq_probs=log_sum_sq, entropy=zeros,
                                     mean_logits=zeros, is_top1=zeros.bool(), aux_loss=None)


def _lengths(seed):
    rng = np.random.default_rng(seed)
    return rng.integers(1, T + 1, B), rng.integers(1, T + 1, B)


def _pair_data(seed):
    """TRL's padded batch (chosen rows, then rejected rows) with per-token log-probs of policy and reference
    and the policy's log sum p^2, zero outside each completion (as TRL's fused head returns them)."""
    rng = np.random.default_rng(seed)
    lc, lr = _lengths(seed)
    lengths = np.concatenate([lc, lr])
    mask = np.zeros((2 * B, P + T), np.int64)
    for r, n in enumerate(lengths):
        mask[r, P: P + n] = 1
    shift = mask[:, 1:].astype(bool)
    lp = np.where(shift, -rng.uniform(0.05, 3.0, shift.shape), 0.0).astype(np.float32)
    ref = np.where(shift, lp + rng.normal(0.0, 0.4, shift.shape), 0.0).astype(np.float32)
    lss = np.where(shift, -rng.uniform(0.5, 2.5, shift.shape), 0.0).astype(np.float32)
    return dict(mask=mask, lp=lp, ref=ref, lss=lss)


def trl_dpo_loss(data, *, loss_type=("sigmoid",), loss_weights=None, beta=0.1, ld_alpha=None,
                 use_weighting=False, f_divergence_type="reverse_kl", f_alpha_divergence_coef=0.5,
                 label_smoothing=0.0):
    """TRL 1.16 ``DPOTrainer._compute_loss`` on ``data``: (loss, d loss / d policy per-token log-probs)."""
    from trl import DPOTrainer

    ids = torch.zeros(data["mask"].shape, dtype=torch.long)
    lp = torch.tensor(data["lp"], requires_grad=True)
    policy = FakeModel({id(ids): (lp, torch.tensor(data["lss"]))})
    reference = FakeModel({id(ids): (torch.tensor(data["ref"]), None)})
    fake_self = types.SimpleNamespace(
        model=policy, ref_model=reference, accelerator=_accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=False, ld_alpha=ld_alpha, f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef, loss_types=list(loss_type),
        loss_weights=loss_weights or [1.0] * len(loss_type), beta=beta, label_smoothing=label_smoothing,
        use_weighting=use_weighting, args=types.SimpleNamespace(gradient_checkpointing_kwargs=None,
                                                                discopop_tau=0.05),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "completion_mask": torch.tensor(data["mask"])}
    loss = DPOTrainer._compute_loss(fake_self, policy, inputs, False)
    loss.backward()
    return float(loss.detach()), lp.grad.numpy().astype(np.float64)


def _seq_index(mask):
    """lnpo's seq_index for TRL's rows: row r < B is pair r's chosen (2r), row B + r its rejected (2r + 1)."""
    rows = np.arange(mask.shape[0])
    seq = np.where(rows < B, 2 * rows, 2 * (rows - B) + 1)
    return np.where(mask[:, 1:] == 1, seq[:, None], -1).astype(np.int32)


def lnpo_pair_loss(data, name, hp):
    """lnpo: per-token arrays -> the step's sums and statistics -> the objective; (mean loss, gradient)."""
    mb = {"seq_index": jnp.asarray(_seq_index(data["mask"]))}
    ref_tokens, lss = jnp.asarray(data["ref"]), jnp.asarray(data["lss"])
    fn = losses.get(name)
    hp = {k: jnp.float32(v) for k, v in losses.validate(name, hp).items() if v is not None}

    def mean_loss(tokens):
        sums, counts = logprobs.sequence_logps(tokens, mb["seq_index"], 2 * B)
        ref_sums, _ = logprobs.sequence_logps(ref_tokens, mb["seq_index"], 2 * B)
        extra = steps.pair_statistics(mb, fn.needs, counts, tokens, ref_tokens, lss, None) \
            if fn.needs else {}
        pair = losses.PairLogps(sums[0::2], sums[1::2], ref_sums[0::2], ref_sums[1::2], counts[0::2],
                                counts[1::2], **extra)
        return fn(pair, **hp)[0].mean()

    loss, grad = jax.value_and_grad(mean_loss)(jnp.asarray(data["lp"]))
    return float(loss), np.asarray(grad, np.float64)


# (TRL DPOConfig fields, lnpo objective, lnpo hyperparameters): the same loss, to float32 rounding.
DPO_CASES = {
    "sigmoid": (dict(beta=0.3), "dpo", dict(beta=0.3)),
    "sigmoid_norm": (dict(loss_type=("sigmoid_norm",), beta=2.0), "ln_dpo", dict(beta=2.0)),
    "ld_alpha": (dict(beta=0.3, ld_alpha=0.4), "ld_dpo", dict(beta=0.3, alpha=0.4)),
    "ld_alpha_0": (dict(beta=0.3, ld_alpha=0.0), "ld_dpo", dict(beta=0.3, alpha=0.0)),
    "use_weighting": (dict(beta=0.3, use_weighting=True), "dpo_wpo", dict(beta=0.3)),
    "ipo_weighting": (dict(loss_type=("ipo",), beta=0.4, use_weighting=True), "ipo_wpo", dict(beta=0.4)),
    "ld_alpha_weighting": (dict(beta=0.3, ld_alpha=0.5, use_weighting=True), "ld_dpo_wpo",
                           dict(beta=0.3, alpha=0.5)),
    "sigmoid_norm_weighting": (dict(loss_type=("sigmoid_norm",), beta=2.0, use_weighting=True), "ln_dpo_wpo",
                               dict(beta=2.0)),
    "hinge": (dict(loss_type=("hinge",), beta=0.2), "hinge", dict(beta=0.2)),
    "ipo": (dict(loss_type=("ipo",), beta=0.4), "ipo", dict(beta=0.4)),
    "robust": (dict(loss_type=("robust",), beta=0.3, label_smoothing=0.2), "robust",
               dict(beta=0.3, label_smoothing=0.2)),
    "exo_pair": (dict(loss_type=("exo_pair",), beta=0.3, label_smoothing=0.01), "exo_pair",
                 dict(beta=0.3, label_smoothing=0.01)),
    "nca_pair": (dict(loss_type=("nca_pair",), beta=0.3), "nca_pair", dict(beta=0.3)),
    # TRL 1.16's bco_pair keeps no running mean: its reward shift is 0.
    "bco_pair": (dict(loss_type=("bco_pair",), beta=0.3), "bco_pair", dict(beta=0.3, delta=0.0)),
    "sppo_hard": (dict(loss_type=("sppo_hard",), beta=0.3), "sppo_hard", dict(beta=0.3)),
    "aot": (dict(loss_type=("aot",), beta=0.3), "aot", dict(beta=0.3)),
    "aot_unpaired": (dict(loss_type=("aot_unpaired",), beta=0.3), "aot_unpaired", dict(beta=0.3)),
    "apo_zero": (dict(loss_type=("apo_zero",), beta=0.3), "apo_zero", dict(beta=0.3)),
    "apo_down": (dict(loss_type=("apo_down",), beta=0.3), "apo_down", dict(beta=0.3)),
    "discopop": (dict(loss_type=("discopop",), beta=0.3), "discopop", dict(beta=0.3, tau=0.05)),
    "forward_kl": (dict(beta=0.3, f_divergence_type="forward_kl"), "fdpo_forward_kl", dict(beta=0.3)),
    "js_divergence": (dict(beta=0.3, f_divergence_type="js_divergence"), "fdpo_js", dict(beta=0.3)),
    # TRL's coefficient c uses f'(t) = (t^(c-1) - 1)/(c-1): lnpo's alpha (f'(u) = (1 - u^-alpha)/alpha) is 1 - c.
    "alpha_divergence": (dict(beta=0.3, f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3),
                         "fdpo_alpha", dict(beta=0.3, alpha=0.7)),
}


# f-divergences on every TRL loss type that accepts them (TRL 1.16's f_divergence_loss_types; sigmoid's are the
# fdpo_* rows above, ["sigmoid", "sft"] is rpo, below): lnpo's <base>_<suffix> siblings.
F_DIVERGENCES = {  # lnpo suffix -> (TRL DPOConfig fields, lnpo hyperparameters)
    "_forward_kl": (dict(f_divergence_type="forward_kl"), {}),
    "_js": (dict(f_divergence_type="js_divergence"), {}),
    "_alpha_div": (dict(f_divergence_type="alpha_divergence", f_alpha_divergence_coef=0.3), dict(f_alpha=0.7)),
}
F_BASES = {  # lnpo base -> TRL DPOConfig fields (each case's beta is the lnpo hyperparameters' beta)
    "ln_dpo": dict(loss_type=("sigmoid_norm",)),
    "ld_dpo": dict(ld_alpha=0.4),
    "hinge": dict(loss_type=("hinge",)),
    "ipo": dict(loss_type=("ipo",)),
    "exo_pair": dict(loss_type=("exo_pair",), label_smoothing=0.01),
    "robust": dict(loss_type=("robust",), label_smoothing=0.2),
    "discopop": dict(loss_type=("discopop",)),
}
F_BASE_HP = {"ln_dpo": dict(beta=2.0), "ld_dpo": dict(beta=0.3, alpha=0.4), "hinge": dict(beta=0.2),
             "ipo": dict(beta=0.4), "exo_pair": dict(beta=0.3, label_smoothing=0.01),
             "robust": dict(beta=0.3, label_smoothing=0.2), "discopop": dict(beta=0.3, tau=0.05)}
for _base, _trl in F_BASES.items():
    for _suffix, (_trl_f, _hp_f) in F_DIVERGENCES.items():
        DPO_CASES[_base + _suffix] = ({**_trl, **_trl_f, "beta": F_BASE_HP[_base]["beta"]}, _base + _suffix,
                                      {**F_BASE_HP[_base], **_hp_f})
# with WPO weighting on top (TRL use_weighting=True; not on hinge: TRL 1.16's in-place `per_sequence_loss *=`
# on relu's output breaks its own backward pass)
DPO_CASES["robust_forward_kl_wpo"] = ({**DPO_CASES["robust_forward_kl"][0], "use_weighting": True},
                                      "robust_forward_kl_wpo", DPO_CASES["robust_forward_kl"][2])
DPO_CASES["ipo_alpha_div_wpo"] = ({**DPO_CASES["ipo_alpha_div"][0], "use_weighting": True}, "ipo_alpha_div_wpo",
                                  DPO_CASES["ipo_alpha_div"][2])


def test_f_divergence_siblings_exist_exactly_where_trl_allows_them():
    """TRL 1.16 refuses a non-default f_divergence_type outside ``f_divergence_loss_types`` (read from its
    source); lnpo has f-divergence siblings for exactly those loss types' objectives, and for no others."""
    import inspect
    import re

    from trl import DPOTrainer

    src = inspect.getsource(DPOTrainer.__init__)
    trl_types = set(re.findall(r'"(\w+)"', re.search(r"f_divergence_loss_types = \{([^}]*)\}", src).group(1)))
    assert trl_types == {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
    covered = {"sigmoid", "sft"} | {t for trl_kw in F_BASES.values() for t in trl_kw.get("loss_type", ())}
    assert covered == trl_types
    with_f = {n[: -len(s)] for n in losses.names() for s in F_DIVERGENCES if n.endswith(s)}
    assert with_f == set(F_BASES) | {"rpo", "fdpo"}  # fdpo_forward_kl, fdpo_js: sigmoid's own
    assert "nca_pair_forward_kl" not in losses.names() and "aot_js" not in losses.names()


@pytest.mark.parametrize("case", sorted(DPO_CASES))
def test_dpo_family_matches_trl(case):
    trl_kwargs, name, hp = DPO_CASES[case]
    for seed in (0, 1):
        data = _pair_data(seed)
        want, want_grad = trl_dpo_loss(data, **trl_kwargs)
        got, got_grad = lnpo_pair_loss(data, name, hp)
        np.testing.assert_allclose(got, want, rtol=2e-5, err_msg=case)
        # TRL sums its per-token log-probs unmasked (the model returns 0 off the completion), so its
        # gradient reaches the off-completion positions too; compare where there are completion tokens.
        on = data["mask"][:, 1:] == 1
        np.testing.assert_allclose(got_grad[on], want_grad[on], rtol=1e-4, atol=1e-7, err_msg=case)


def test_rpo_differs_from_trl_sigmoid_plus_sft_only_in_how_the_nll_averages():
    """TRL's RPO is ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1, alpha]``; its sft term is the mean NLL
    over all chosen *tokens* of the batch, lnpo's ``rpo`` the mean over pairs of each chosen response's
    per-token NLL. Equal when every chosen response has the same length; otherwise they differ by alpha times
    the difference of the two averages, which the test computes independently."""
    alpha = 0.5
    data = _pair_data(3)
    want, _ = trl_dpo_loss(data, loss_type=("sigmoid", "sft"), loss_weights=[1.0, alpha], beta=0.3)
    got, _ = lnpo_pair_loss(data, "rpo", dict(beta=0.3, alpha=alpha))
    chosen = data["lp"][:B]
    n = data["mask"][:B, 1:].sum(1)
    token_mean, pair_mean = -chosen.sum() / n.sum(), np.mean(-chosen.sum(1) / n)
    np.testing.assert_allclose(got - want, alpha * (pair_mean - token_mean), rtol=1e-4, atol=1e-6)
    assert abs(got - want) > 1e-4  # unequal lengths here: the difference is real, and bounded as computed
    # with equal chosen lengths the two agree
    data = _pair_data(4)
    data["mask"][:B] = 0
    data["mask"][:B, P: P + 5] = 1
    shift = data["mask"][:B, 1:].astype(bool)
    data["lp"][:B] = np.where(shift, np.minimum(data["lp"][:B], -0.05), 0.0)
    data["ref"][:B] = np.where(shift, data["lp"][:B] + 0.1, 0.0)
    want, _ = trl_dpo_loss(data, loss_type=("sigmoid", "sft"), loss_weights=[1.0, alpha], beta=0.3)
    got, _ = lnpo_pair_loss(data, "rpo", dict(beta=0.3, alpha=alpha))
    np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("suffix", sorted(F_DIVERGENCES))
def test_rpo_f_divergence_matches_trl_sigmoid_plus_sft_up_to_the_nll_average(suffix):
    """TRL's ``["sigmoid", "sft"]`` under an f-divergence against ``rpo<suffix>``: only the sigmoid term changes,
    so the difference is the same token-vs-pair NLL average as without one."""
    alpha = 0.5
    trl_f, hp_f = F_DIVERGENCES[suffix]
    data = _pair_data(3)
    want, _ = trl_dpo_loss(data, loss_type=("sigmoid", "sft"), loss_weights=[1.0, alpha], beta=0.3, **trl_f)
    got, _ = lnpo_pair_loss(data, "rpo" + suffix, dict(beta=0.3, alpha=alpha, **hp_f))
    plain, _ = lnpo_pair_loss(data, "rpo", dict(beta=0.3, alpha=alpha))
    chosen = data["lp"][:B]
    n = data["mask"][:B, 1:].sum(1)
    token_mean, pair_mean = -chosen.sum() / n.sum(), np.mean(-chosen.sum(1) / n)
    np.testing.assert_allclose(got - want, alpha * (pair_mean - token_mean), rtol=1e-4, atol=1e-6)
    assert abs(got - plain) > 1e-4  # the f-divergence really changed the loss


def test_trl_sigmoid_has_no_label_smoothing():
    """TRL 1.16's sigmoid ignores label_smoothing (cDPO is lnpo-only: ``dpo``'s label_smoothing > 0)."""
    data = _pair_data(5)
    plain, _ = trl_dpo_loss(data, beta=0.3)
    smoothed, _ = trl_dpo_loss(data, beta=0.3, label_smoothing=0.2)
    assert plain == smoothed
    cdpo, _ = lnpo_pair_loss(data, "dpo", dict(beta=0.3, label_smoothing=0.2))
    assert abs(cdpo - plain) > 1e-3


def test_discopop_stays_finite_where_trl_overflows():
    """TRL computes w * exp(-beta m) as written: at a margin of about -300 per token its float32 exp overflows
    and w = sigma(beta m / tau) underflows, so its loss is inf * 0 = nan. lnpo computes the product as
    exp(-beta m + log sigma(beta m / tau)) and gets the float64 formula's value."""
    from test_objectives import REFERENCES

    data = _pair_data(6)
    data["lp"][:B] = np.where(data["mask"][:B, 1:] == 1, data["lp"][:B] - 300.0, 0.0)
    want, _ = trl_dpo_loss(data, loss_type=("discopop",), beta=1.0)
    got, _ = lnpo_pair_loss(data, "discopop", dict(beta=1.0, tau=0.05))
    sums = lambda a: a.astype(np.float64).sum(1)  # noqa: E731
    lp, ref = sums(data["lp"]), sums(data["ref"])
    d = dict(pc=lp[:B], pr=lp[B:], rc=ref[:B], rr=ref[B:])
    exact = REFERENCES["discopop"](d, {"beta": 1.0, "tau": 0.05})[0].mean()
    assert np.isnan(want) and np.isfinite(got)
    np.testing.assert_allclose(got, exact, rtol=1e-5)


# ============================================================================ CPO's AlphaPO


def trl_cpo_losses(mean_chosen, mean_rejected, *, loss_type="simpo", beta=2.0, gamma=0.5, alpha=0.0):
    """TRL 1.16 ``CPOTrainer.cpo_loss`` (per pair) on per-token mean log-probs, as CPO passes them for simpo."""
    from trl.experimental.cpo import CPOTrainer

    fake_self = types.SimpleNamespace(alpha=alpha, beta=beta, loss_type=loss_type, simpo_gamma=gamma,
                                      label_smoothing=0.0, accelerator=_accelerator())
    pc = torch.tensor(mean_chosen, requires_grad=True)
    out, rc, rr = CPOTrainer.cpo_loss(fake_self, pc, torch.tensor(mean_rejected))
    out.sum().backward()
    return out.detach().numpy(), pc.grad.numpy(), rc.numpy(), rr.numpy()


@pytest.mark.parametrize("alpha", [0.0, 0.25, -0.5, 1e-3])
def test_alphapo_matches_trl_cpo_alpha(alpha):
    rng = np.random.default_rng(7)
    lc, lr = _lengths(7)
    pc = (-rng.uniform(0.1, 3.0, B) * lc).astype(np.float32)
    pr = (-rng.uniform(0.1, 3.0, B) * lr).astype(np.float32)
    want, want_grad, want_rc, want_rr = trl_cpo_losses(pc / lc, pr / lr, alpha=alpha)
    name = "alphapo" if alpha else "simpo"
    hp = dict(beta=2.0, gamma=0.5, **({"alpha": alpha} if alpha else {}))
    fn = lambda c: losses.get(name)(losses.PairLogps(c, jnp.asarray(pr), None, None, lc, lr), **hp)  # noqa: E731
    (got, metrics) = fn(jnp.asarray(pc))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(metrics["rewards/chosen"]), want_rc, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics["rewards/rejected"]), want_rr, rtol=2e-5, atol=1e-6)
    grad = jax.grad(lambda c: fn(c)[0].sum())(jnp.asarray(pc))
    # TRL's gradient is per mean log-prob: d/d sum = d/d mean / L(y_w)
    np.testing.assert_allclose(np.asarray(grad), want_grad / lc, rtol=1e-4, atol=1e-7)


# ============================================================================ KTO


def _unpaired_data(seed, n=8):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, (2, n))
    out = {"label": np.array([1, 0, 1, 1, 0, 0, 1, 0][:n], bool)}
    for which, lens in (("", lengths[0]), ("KL_", lengths[1])):
        mask = np.zeros((n, P + T), np.int64)
        for r, k in enumerate(lens):
            mask[r, P: P + k] = 1
        shift = mask[:, 1:].astype(bool)
        lp = np.where(shift, -rng.uniform(0.05, 3.0, shift.shape), 0.0).astype(np.float32)
        out[which + "mask"] = mask
        out[which + "lp"] = lp
        out[which + "ref"] = np.where(shift, lp + rng.normal(0.0, 0.5, shift.shape), 0.0).astype(np.float32)
    return out


def trl_kto_loss(data, *, loss_type="kto", beta=0.3, desirable_weight=1.0, undesirable_weight=1.0):
    from trl import KTOTrainer

    ids, kl_ids = torch.zeros(data["mask"].shape, dtype=torch.long), torch.zeros(data["KL_mask"].shape,
                                                                                   dtype=torch.long)
    lp = torch.tensor(data["lp"], requires_grad=True)
    policy = FakeModel({id(ids): (lp, None), id(kl_ids): (torch.tensor(data["KL_lp"]), None)})
    reference = FakeModel({id(ids): (torch.tensor(data["ref"]), None),
                           id(kl_ids): (torch.tensor(data["KL_ref"]), None)})
    fake_self = types.SimpleNamespace(
        model=policy, ref_model=reference, accelerator=_accelerator(), aux_loss_enabled=False,
        precompute_ref_logps=False, calculate_KL=loss_type == "kto", loss_type=loss_type, beta=beta,
        desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
        args=types.SimpleNamespace(gradient_checkpointing_kwargs=None),
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    fake_self._compute_kl_logps = lambda model, batch: KTOTrainer._compute_kl_logps(fake_self, model, batch)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": torch.tensor(data["mask"]),
              "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(kl_ids),
              "KL_completion_mask": torch.tensor(data["KL_mask"]), "label": torch.tensor(data["label"])}
    loss = KTOTrainer._compute_loss(fake_self, policy, inputs, False)
    loss.backward()
    return float(loss.detach()), lp.grad.numpy().astype(np.float64), fake_self._metrics["train"]


def lnpo_kto_loss(data, name, hp):
    n = len(data["label"])
    ref_c, ref_kl = data["ref"].sum(1), data["KL_ref"].sum(1)
    counts = jnp.asarray(data["mask"].sum(1)), jnp.asarray(data["KL_mask"].sum(1))

    def mean_loss(tokens):
        pair = losses.PairLogps(tokens.sum(1), jnp.asarray(data["KL_lp"].sum(1)), jnp.asarray(ref_c),
                                jnp.asarray(ref_kl), counts[0], counts[1], label=jnp.asarray(data["label"]))
        loss, metrics = losses.get(name)(pair, **hp)
        return loss.sum() / n, metrics

    (loss, metrics), grad = jax.value_and_grad(mean_loss, has_aux=True)(jnp.asarray(data["lp"]))
    return float(loss), np.asarray(grad, np.float64), metrics


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.33, 0.7)])
@pytest.mark.parametrize("kl_shift", [0.0, 0.8])  # KL estimate clamped at 0 / positive
def test_kto_matches_trl(weights, kl_shift):
    data = _unpaired_data(8)
    shift = data["KL_mask"][:, 1:].astype(bool)
    data["KL_lp"] = np.where(shift, data["KL_lp"] + kl_shift, 0.0).astype(np.float32)
    hp = dict(beta=0.3, desirable_weight=weights[0], undesirable_weight=weights[1])
    want, want_grad, trl_metrics = trl_kto_loss(data, **hp)
    got, got_grad, metrics = lnpo_kto_loss(data, "kto", hp)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    on = data["mask"][:, 1:] == 1
    np.testing.assert_allclose(got_grad[on], want_grad[on], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(metrics["kl"][0]), trl_metrics["kl"][-1], rtol=1e-5, atol=1e-7)
    label = data["label"]
    np.testing.assert_allclose(float(np.asarray(metrics["rewards/chosen"])[label].mean()),
                               trl_metrics["rewards/chosen"][-1], rtol=1e-5)
    np.testing.assert_allclose(float(np.asarray(metrics["rewards/chosen"])[~label].mean()),
                               trl_metrics["rewards/rejected"][-1], rtol=1e-5)


def test_apo_zero_unpaired_matches_trl():
    data = _unpaired_data(9)
    want, want_grad, _ = trl_kto_loss(data, loss_type="apo_zero_unpaired", beta=0.4)
    got, got_grad, _ = lnpo_kto_loss(data, "apo_zero_unpaired", dict(beta=0.4))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    on = data["mask"][:, 1:] == 1
    np.testing.assert_allclose(got_grad[on], want_grad[on], rtol=1e-4, atol=1e-7)
