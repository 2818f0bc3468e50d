"""lnpo.sweep: expansion, running, skipping, failures, launch commands, shared SFT model and reference cache,
and the study's sweep configs (configs/sweeps/) run end to end on tiny models and local fixture files."""

from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from lnpo import sweep as sweep_lib  # noqa: E402

SMOKE = os.path.join(REPO, "configs", "sweeps", "smoke.py")
PAPER = os.path.join(REPO, "configs", "sweeps", "paper.py")
PAPER_EMBEDDED = os.path.join(REPO, "configs", "sweeps", "paper_embedded.py")

# Every test uses the same tiny shapes (model, rows of 64 tokens, 8 pairs per step) so the XLA executables
# compiled by one (persistent compilation cache, tests/conftest.py) serve the others. Evaluation: 4 prompts,
# 8 new tokens.
TINY_MODEL = {"model.tiny.hidden_size": 32, "model.tiny.intermediate_size": 64, "model.tiny.num_layers": 2,
              "model.tiny.num_heads": 4, "model.tiny.num_kv_heads": 2}
TINY_DATA = {"data.max_prompt_len": 32, "data.max_len": 64, "data.layout": "padded"}
TINY_EVAL = {"eval.max_new_tokens": 8, "eval.max_prompts": 4, "eval.batch_size": 4, "eval.num_samples": 1}
TINY_TRAIN = {"train.steps": 2, "train.global_batch": 8, "train.eval_batches": 1, "train.eval_every": 1000,
              "train.checkpoint_every": 1000, "train.log_every": 1, "optim.warmup_steps": 0}


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    """The embedded task, small: a tokenizer and short JSONL splits."""
    from lnpo.data.embedded import materialize

    root = tmp_path_factory.mktemp("task")
    return materialize(str(root), seed=0, sizes={"sft": 16, "train_prefs": 32, "eval_prefs": 8, "ood_prompts": 8})


def _save_tiny(path: str, tokenizer_dir: str, *, num_labels: int = 0, seed: int = 0) -> str:
    from flax import nnx
    from transformers import AutoTokenizer

    from lnpo.models import Decoder, ModelConfig, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = ModelConfig.tiny(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, num_labels=num_labels)
    save_pretrained(Decoder(config, rngs=nnx.Rngs(seed)), path, tokenizer=tokenizer)
    return path


@pytest.fixture(scope="module")
def tiny_sft_dir(tmp_path_factory, task_files):
    """A tiny random causal LM in Hugging Face format with the embedded task's tokenizer."""
    return _save_tiny(str(tmp_path_factory.mktemp("sft") / "model"), task_files["tokenizer"])


def _fixture_run_overrides(model_path: str, task_files: dict) -> dict:
    return {"model.path": model_path, "data.source": task_files["train_prefs"],
            "data.eval_source": task_files["eval_prefs"], "data.ood_prompts": task_files["ood_prompts"],
            "eval.scorer": "embedded", **TINY_DATA, **TINY_TRAIN, **TINY_EVAL}


def _mtimes(root: str) -> dict:
    return {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(root, "*", "eval", "summary.json"))
            + glob.glob(os.path.join(root, "*", "run.json"))}


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- expansion (no training)
def test_expand_names_grid_points_and_overrides():
    sweep = sweep_lib.load_sweep(SMOKE, overrides={"methods.simpo.gamma": (0.5, 1.0), "seeds": (0, 1)})
    specs = sweep_lib.expand(sweep, "/sweeps/x", config_root=REPO)
    assert [s.name for s in specs] == [
        "dpo-beta0.1-lr0.001-seed0", "dpo-beta0.1-lr0.001-seed1", "dpo-beta0.5-lr0.001-seed0",
        "dpo-beta0.5-lr0.001-seed1",
        "simpo-beta1-gamma0.5-lr0.001-seed0", "simpo-beta1-gamma0.5-lr0.001-seed1",
        "simpo-beta1-gamma1-lr0.001-seed0", "simpo-beta1-gamma1-lr0.001-seed1",
        "simpo-beta2-gamma0.5-lr0.001-seed0", "simpo-beta2-gamma0.5-lr0.001-seed1",
        "simpo-beta2-gamma1-lr0.001-seed0", "simpo-beta2-gamma1-lr0.001-seed1"]
    assert all(os.path.dirname(s.workdir) == "/sweeps/x" for s in specs)  # one runs root for every run
    c = specs[6].config()
    assert (c.loss.name, c.loss.beta, c.loss.gamma, c.optim.lr, c.seed) == ("simpo", 1.0, 1.0, 1e-3, 0)
    assert c.train.steps == 3 and c.model.tiny.hidden_size == 32 and c.eval.max_new_tokens == 16
    assert specs[0].config().loss.to_dict() == {"name": "dpo", "beta": 0.1}
    # --only, disabled methods, and errors naming the field
    assert [s.name for s in sweep_lib.expand(sweep, "/d", config_root=REPO, only=["dpo-beta0.5*"])] == [
        "dpo-beta0.5-lr0.001-seed0", "dpo-beta0.5-lr0.001-seed1"]
    with sweep.unlocked():
        sweep.methods.simpo.enabled = False
    assert {s.method for s in sweep_lib.expand(sweep, "/d", config_root=REPO)} == {"dpo"}
    with pytest.raises(sweep_lib.SweepError, match="methods.dpo.beta: empty grid"):
        sweep_lib.expand(sweep_lib.load_sweep(SMOKE, overrides={"methods.dpo.beta": ()}), "/d", config_root=REPO)
    with pytest.raises(sweep_lib.SweepError, match="no field 'betas'"):
        sweep_lib.load_sweep(SMOKE, overrides={"methods.dpo.betas": (0.1,)})


def test_paper_config_direction_and_required_fields(tmp_path):
    rm = str(tmp_path)
    base = {"reward_model": rm, "hh_rlhf.test": "/d/hh-test.jsonl", "pku_saferlhf.test": "/d/pku-test.jsonl"}
    fwd = sweep_lib.load_sweep(f"{PAPER}:/ckpt/sft", overrides=base)
    c = sweep_lib.expand(fwd, "/r", config_root=REPO)[0].config()
    assert (c.model.path, c.data.source, c.data.split, c.data.eval_source, c.data.eval_split, c.data.ood_prompts,
            c.eval.scorer) == ("/ckpt/sft", "Anthropic/hh-rlhf", "train", "/d/hh-test.jsonl", "test",
                               "/d/pku-test.jsonl", f"torch:{rm}")
    rev = sweep_lib.load_sweep(f"{PAPER}:/ckpt/sft", overrides={**base, "direction": "pku_to_hh"})
    c = sweep_lib.expand(rev, "/r", config_root=REPO)[0].config()
    assert (c.data.source, c.data.eval_source, c.data.ood_prompts) == (
        "PKU-Alignment/PKU-SafeRLHF", "/d/pku-test.jsonl", "/d/hh-test.jsonl")
    specs = sweep_lib.expand(fwd, "/r", config_root=REPO)
    assert {s.method for s in specs} == {"dpo", "lndpo", "simpo"} and len(specs) == 44
    with pytest.raises(ValueError, match="sft_path"):
        sweep_lib.load_sweep(PAPER, overrides={"reward_model": rm})
    with pytest.raises(ValueError, match="reward_model"):
        sweep_lib.load_sweep(f"{PAPER}:/ckpt/sft")
    with pytest.raises(ValueError, match="direction"):
        sweep_lib.load_sweep(f"{PAPER}:/ckpt/sft", overrides={**base, "direction": "sideways"})


# ----------------------------------------------------------------------------- print_commands
def _parse_with_lnpo_main_flags(args: list[str]) -> dict:
    """The config lnpo.main would build from ``args`` (its absl flags: --config file + overrides)."""
    code = ("import sys, json\n"
            "from absl import flags\n"
            "from lnpo.config_files import define_config_flag\n"
            "define_config_flag(sys.argv)\n"
            "flags.DEFINE_string('workdir', None, '')\n"
            "flags.FLAGS(sys.argv)\n"
            "print(json.dumps({'workdir': flags.FLAGS.workdir, 'config': flags.FLAGS.config.to_dict()}))\n")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_print_commands_one_lnpo_main_line_per_run(tmp_path):
    workdir = str(tmp_path / "sweep")
    out = subprocess.run([sys.executable, "-m", "lnpo.sweep", "--config=configs/sweeps/smoke.py",
                          f"--workdir={workdir}", "--print_commands", "--config.methods.simpo.gamma=(0.5, 1.0)",
                          "--set", "train.steps=7"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    sweep = sweep_lib.load_sweep(SMOKE, overrides={"methods.simpo.gamma": (0.5, 1.0)},
                                 run_overrides={"train.steps": 7})
    specs = sweep_lib.expand(sweep, workdir, config_root=REPO)
    assert len(lines) == len(specs) == 6
    assert "warning" not in out.stderr  # every override is a field of configs/base.py
    for line, spec in zip(lines, specs):
        args = shlex.split(line)
        assert args[:3] == ["python", "-m", "lnpo.main"]
        assert args[3] == f"--config=configs/{spec.method}.py"
        assert args[4] == f"--workdir={workdir}/{spec.name}"
        assert f"--config.loss.beta={spec.point['beta']!r}" in args and "--config.train.steps=7" in args
    for i in (0, 5):  # lnpo.main's own flag parsing rebuilds exactly the run's config
        parsed = _parse_with_lnpo_main_flags(shlex.split(lines[i])[3:])
        assert parsed["workdir"] == specs[i].workdir
        assert parsed["config"] == json.loads(json.dumps(specs[i].config().to_dict()))
    # The programmatic form prints the same lines.
    import io

    buf = io.StringIO()
    assert sweep_lib.print_commands(sweep, workdir, config_root=REPO, file=buf) == lines
    assert buf.getvalue().strip().splitlines() == lines


def test_command_line_dry_run_and_config_errors(tmp_path):
    def sweep_cli(*args):
        return subprocess.run([sys.executable, "-m", "lnpo.sweep", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": REPO})

    out = sweep_cli("--config=configs/sweeps/smoke.py", f"--workdir={tmp_path}", "--dry_run", "--only=simpo")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["simpo-beta1-gamma0.5-lr0.001-seed0\tnew",
                                       "simpo-beta2-gamma0.5-lr0.001-seed0\tnew"]
    assert not os.listdir(tmp_path)  # a dry run writes nothing
    out = sweep_cli("--config=configs/sweeps/paper.py", f"--workdir={tmp_path}", "--print_commands")
    assert out.returncode == 2 and "sft_path" in out.stderr and not out.stdout
    out = sweep_cli("--config=configs/sweeps/smoke.py", f"--workdir={tmp_path}", "--dry_run", "--set", "train.steps")
    assert out.returncode == 2 and "KEY=VALUE" in out.stderr


# ----------------------------------------------------------------------------- running
def test_smoke_sweep_runs_records_failures_skips_finished_and_reports(tmp_path, tiny_sft_dir, task_files,
                                                                      monkeypatch):
    from lnpo.train import run as run_module
    from lnpo.train import trainer

    root = str(tmp_path / "sweep")
    # One invalid grid point (beta = -1) among DPO's: it fails, the others finish.
    sweep = sweep_lib.load_sweep(SMOKE, overrides={"methods.dpo.beta": (0.1, -1.0, 0.5)},
                                 run_overrides=_fixture_run_overrides(tiny_sft_dir, task_files))
    ref_calls = []
    real_compute = trainer.compute_reference
    monkeypatch.setattr(trainer, "compute_reference", lambda *a, **k: ref_calls.append(1) or real_compute(*a, **k))
    logs = []
    out = sweep_lib.run_sweep(sweep, root, config_root=REPO, log=logs.append)

    ok = ["dpo-beta0.1-lr0.001-seed0", "dpo-beta0.5-lr0.001-seed0", "simpo-beta1-gamma0.5-lr0.001-seed0",
          "simpo-beta2-gamma0.5-lr0.001-seed0"]
    bad = "dpo-beta-1-lr0.001-seed0"
    assert out["finished"] == 4 and out["failed"] == [bad] and out["skipped"] == 0
    for name in ok:
        run = _json(os.path.join(root, name, "run.json"))
        assert run["status"] == "trained" and run["eval"]["max_new_tokens"] == 8
        summary = _json(os.path.join(root, name, "eval", "summary.json"))
        assert summary["status"] == "ok" and summary["num_prompts"] == 4
        assert sweep_lib.run_status(os.path.join(root, name)) == "finished"
    failed = _json(os.path.join(root, bad, "run.json"))
    assert failed["status"] == "failed" and "beta" in failed["error"] and "\n" not in failed["error"]
    assert failed["method"] == "dpo" and failed["loss"]["beta"] == -1.0
    assert os.path.isfile(os.path.join(root, bad, "error.log"))
    # The reference log-probs were computed once (training + held-out pairs) for both DPO runs;
    # SimPO is reference-free.
    assert len(glob.glob(os.path.join(root, "reference_cache", "reference-*.npz"))) == 2 and len(ref_calls) == 2
    # The report: 4 evaluated runs, the failed one listed.
    assert out["report"]["ok"] == 4 and out["report"]["failed"] == [bad]
    report = open(os.path.join(root, "report.md")).read()
    assert bad in report and all(n in report for n in ok)
    status = {r["name"]: r["status"] for r in _json(os.path.join(root, "sweep.json"))["runs"]}
    assert status == {**{n: "finished" for n in ok}, bad: "failed"}

    # Again: finished runs are skipped (not retrained, not re-evaluated); the failed one is retried.
    before = _mtimes(root)
    calls = []
    real_run = run_module.run
    monkeypatch.setattr(run_module, "run",
                        lambda config, workdir: calls.append(config.name) or real_run(config, workdir))
    out2 = sweep_lib.run_sweep(sweep, root, config_root=REPO, log=logs.append)
    assert calls == [bad]
    assert out2["skipped"] == 4 and out2["finished"] == 0 and out2["failed"] == [bad]
    after = _mtimes(root)
    assert {k: v for k, v in after.items() if bad not in k} == {k: v for k, v in before.items() if bad not in k}


def test_trained_but_unevaluated_run_is_only_evaluated(tmp_path, tiny_sft_dir, task_files, monkeypatch):
    from lnpo.train import run as run_module

    root = str(tmp_path / "sweep")
    overrides = {"methods.dpo.beta": (0.1,), "methods.simpo.enabled": False}
    train_only = sweep_lib.load_sweep(SMOKE, overrides={**overrides, "evaluate": False, "report": False},
                                      run_overrides=_fixture_run_overrides(tiny_sft_dir, task_files))
    out = sweep_lib.run_sweep(train_only, root, config_root=REPO, log=lambda _: None)
    name = "dpo-beta0.1-lr0.001-seed0"
    assert out["finished"] == 1 and not os.path.exists(os.path.join(root, name, "eval"))
    assert sweep_lib.run_status(os.path.join(root, name), evaluate=False) == "finished"
    # Evaluation turned on: the trained run is evaluated without training it again.
    monkeypatch.setattr(run_module, "run", lambda *a, **k: pytest.fail("retrained a trained run"))
    full = sweep_lib.load_sweep(SMOKE, overrides={**overrides, "report": False},
                                run_overrides=_fixture_run_overrides(tiny_sft_dir, task_files))
    out = sweep_lib.run_sweep(full, root, config_root=REPO, log=lambda _: None)
    assert out["finished"] == 1 and _json(os.path.join(root, name, "eval", "summary.json"))["status"] == "ok"


def _write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _hh_rows(n: int, offset: int = 0) -> list[dict]:
    rows = []
    for i in range(offset, offset + n):
        prompt = f"\n\nHuman: what is {i} plus one?"
        if i % 3 == 0:  # a multi-turn transcript
            prompt = f"\n\nHuman: hello\n\nAssistant: hi there\n\nHuman: what is {i} plus one?"
        rows.append({"chosen": f"{prompt}\n\nAssistant: it is {i + 1}",
                     "rejected": f"{prompt}\n\nAssistant: i do not know, maybe {i + 7} or so"})
    return rows


def _pku_rows(n: int) -> list[dict]:
    return [{"prompt": f"how do i keep my plant number {i} alive?", "response_0": f"water plant {i} every week",
             "response_1": "let it dry out", "better_response_id": i % 2, "safer_response_id": i % 2,
             "is_response_0_safe": True, "is_response_1_safe": True} for i in range(n)]


def test_paper_sweep_end_to_end_on_local_fixture_files(tmp_path, tiny_sft_dir, task_files):
    data = tmp_path / "data"
    data.mkdir()
    hh_train = _write_jsonl(str(data / "hh-train.jsonl"), _hh_rows(16))
    hh_test = _write_jsonl(str(data / "hh-test.jsonl"), _hh_rows(8, offset=100))
    pku_test = _write_jsonl(str(data / "pku-test.jsonl"), _pku_rows(8))
    # A tiny lnpo reward model (num_labels=1): transformers loads it as LlamaForSequenceClassification.
    rm = _save_tiny(str(tmp_path / "rm"), task_files["tokenizer"], num_labels=1, seed=3)
    shrink = {
        "reward_model": rm, "hh_rlhf.train": hh_train, "hh_rlhf.test": hh_test, "pku_saferlhf.test": pku_test,
        "pku_saferlhf.train": pku_test,
        "methods.dpo.beta": (0.1,), "methods.dpo.lr": (1e-3,), "methods.lndpo.beta": (1.0,),
        "methods.lndpo.lr": (1e-3,), "methods.simpo.beta": (2.0,), "methods.simpo.gamma": (0.5,),
        "methods.simpo.lr": (1e-3,),
        "overrides.model.compute_dtype": "float32", "overrides.model.remat": "none",
        "overrides.mesh.shape": (-1, 1, 1),
    }
    # (the rest of the shrinking: fields the paper config sets too, or that it leaves to configs/base.py)
    sweep = sweep_lib.load_sweep(f"{PAPER}:{tiny_sft_dir}", overrides=shrink,
                                 run_overrides={**TINY_DATA, **TINY_TRAIN, **TINY_EVAL})
    root = str(tmp_path / "paper")
    out = sweep_lib.run_sweep(sweep, root, config_root=REPO, log=lambda _: None)
    names = ["dpo-beta0.1-lr0.001-seed0", "lndpo-beta1-lr0.001-seed0", "simpo-beta2-gamma0.5-lr0.001-seed0"]
    assert out["failed"] == [] and out["finished"] == 3, out
    for name in names:
        run = _json(os.path.join(root, name, "run.json"))
        assert run["scorer"] == f"torch:{rm}" and run["eval_prompts"] == pku_test
        assert run["sft_path"] == os.path.abspath(tiny_sft_dir)
        summary = _json(os.path.join(root, name, "eval", "summary.json"))
        assert summary["scorer"] == f"torch:{rm}" and summary["num_prompts"] == 4
        assert summary["score_mean"] is not None and summary["kl_seq_mean"] is not None
    # DPO and LN-DPO share one reference (the SFT checkpoint) on the same data: 2 cache files.
    assert len(glob.glob(os.path.join(root, "reference_cache", "reference-*.npz"))) == 2
    assert out["report"]["ok"] == 3 and os.path.isfile(os.path.join(root, "report.html"))


def test_paper_embedded_sweep_shrunk_trains_the_sft_model_once(tmp_path, monkeypatch):
    from lnpo.train import trainer

    stages = []
    real_train = trainer.train_stage
    monkeypatch.setattr(trainer, "train_stage",
                        lambda config, workdir, **kw: stages.append(config.stage) or real_train(config, workdir, **kw))
    sweep = sweep_lib.load_sweep(
        PAPER_EMBEDDED,
        overrides={"methods.dpo.beta": (0.1,), "methods.lndpo.beta": (1.0,), "methods.simpo.beta": (2.5,),
                   "methods.simpo.gamma": (0.5,), "seeds": (0,)},
        run_overrides={"sft.steps": 4, "sft.global_batch": 16, "sft.warmup_steps": 0, **TINY_MODEL, **TINY_DATA,
                       "data.max_len": 192, **TINY_TRAIN, **TINY_EVAL})
    root = str(tmp_path / "paper_embedded")
    out = sweep_lib.run_sweep(sweep, root, config_root=REPO, log=lambda _: None)
    assert out["failed"] == [] and out["finished"] == 3, out
    assert stages == ["sft", "po", "po", "po"]  # the embedded SFT model is trained once
    sft_dirs = glob.glob(os.path.join(root, "sft-embedded-*"))
    assert len(sft_dirs) == 1
    for name in ("dpo-beta0.1-seed0", "lndpo-beta1-seed0", "simpo-beta2.5-gamma0.5-seed0"):
        assert _json(os.path.join(root, name, "run.json"))["sft_path"] == os.path.join(sft_dirs[0], "export")
        assert _json(os.path.join(root, name, "eval", "summary.json"))["scorer"] == "embedded-v2"
    # one reference, train + held-out pairs
    assert len(glob.glob(os.path.join(root, "reference_cache", "reference-*.npz"))) == 2
    # the SFT model sampled once for the three evaluations (lnpo.evaluate.sample_cache)
    assert len(glob.glob(os.path.join(root, "sft_samples", "sft-samples-*.json"))) == 1
    assert out["report"]["ok"] == 3


def test_processes_that_split_a_sweep_with_only_share_one_sweep_json(tmp_path, monkeypatch):
    from lnpo.sweep import execute

    monkeypatch.setattr(execute, "execute_run", lambda spec, **kw: "finished")
    sweep = sweep_lib.load_sweep(SMOKE)
    root = str(tmp_path)
    first = sweep_lib.run_sweep(sweep, root, config_root=REPO, only=["dpo"], log=lambda _: None)
    second = sweep_lib.run_sweep(sweep, root, config_root=REPO, only=["simpo"], log=lambda _: None)
    assert first["finished"] == second["finished"] == 2
    runs = _json(os.path.join(root, "sweep.json"))["runs"]
    assert sorted(r["name"] for r in runs) == sorted(r["name"] for r in first["runs"] + second["runs"])
    assert {r["status"] for r in runs} == {"finished"}


def test_preempted_run_stops_the_sweep(tmp_path, monkeypatch):
    from lnpo.train import run as run_module

    calls = []
    monkeypatch.setattr(run_module, "run", lambda config, workdir: calls.append(config.name) or {"preempted": True})
    out = sweep_lib.run_sweep(sweep_lib.load_sweep(SMOKE), str(tmp_path), config_root=REPO, log=lambda _: None)
    assert out["preempted"] and calls == ["dpo-beta0.1-lr0.001-seed0"] and out["report"] is None
    assert [r["status"] for r in out["runs"]] == ["preempted", "pending", "pending", "pending"]
    assert sweep_lib.run_status(str(tmp_path / calls[0])) == "started"  # resumed by the next invocation


def test_sweep_process_shares_compiled_programs_in_its_workdir_unless_a_cache_is_configured(tmp_path):
    code = ("import sys, jax; from lnpo.sweep import share_compiled_programs; "
            "print(share_compiled_programs(sys.argv[1])); print(jax.config.jax_compilation_cache_dir)")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sweep")], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "sweep" / "xla_cache")] * 2
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "sweep")], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "mine")] * 2


def test_re_evaluation_passes_the_sweeps_settings_and_leaves_run_json_alone(tmp_path, monkeypatch):
    """A trained run whose run.json holds other evaluation settings is evaluated with the sweep config's
    EvalSettings, handed to the evaluator; run.json is not rewritten."""
    import lnpo.evaluate
    from lnpo import rundir
    from lnpo.eval_settings import EvalSettings
    from lnpo.sweep.execute import execute_run

    sweep = sweep_lib.load_sweep(SMOKE, overrides={"methods.dpo.beta": (0.1,), "methods.simpo.enabled": False},
                                 run_overrides={**TINY_EVAL, "eval.top_k": 3})
    spec = sweep_lib.expand(sweep, str(tmp_path / "sweep"), config_root=REPO)[0]
    os.makedirs(rundir.export_dir(spec.workdir))
    rundir.write_run_info(spec.workdir, rundir.RunInfo(name=spec.name, method="dpo", export=rundir.export_dir(
        spec.workdir), eval_prompts="p.jsonl", scorer="embedded", eval=EvalSettings(max_new_tokens=99)))
    before = open(rundir.run_json(spec.workdir), encoding="utf-8").read()
    seen = {}
    monkeypatch.setattr(lnpo.evaluate, "evaluate_workdir", lambda workdir, **kw: seen.update(kw) or {})
    assert execute_run(spec, log=lambda _: None) == "finished"
    assert seen["settings"] == EvalSettings.from_config(spec.config())
    assert seen["settings"].max_new_tokens == 8 and seen["settings"].top_k == 3
    assert open(rundir.run_json(spec.workdir), encoding="utf-8").read() == before
