"""launch/: the TPU and SLURM scripts' --dry-run output, their remote commands, and the
preemption/sweep loops against a fake gcloud (no network, no cloud)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU = os.path.join(REPO, "launch", "tpu")
SBATCH = os.path.join(REPO, "launch", "slurm", "train.sbatch")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

SLICE = ["--name=lnpo-v5p", "--zone=us-east5-a", "--accelerator-type=v5p-64"]
TRAIN = ["--config=configs/lndpo.py", "--workdir=/mnt/shared/runs/lndpo-8b"]
OVERRIDES = ["--", "--config.model.path=/mnt/shared/llama-8b-sft", "--config.mesh.shape=(1,-1,1)",
             "--config.loss.beta=0.1"]


def sh(script: str, *args: str, state: str | None = None, stdin: str | None = None, env: dict | None = None,
       check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, **(env or {}))
    if state is not None:
        full_env["LNPO_DRY_RUN_STATE"] = state
    proc = subprocess.run(["bash", script, *args], cwd=REPO, env=full_env, input=stdin, capture_output=True,
                          text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def commands(out: str) -> list[list[str]]:
    """The printed commands (not the # notes), split as the shell would."""
    return [shlex.split(line) for line in out.splitlines() if line and not line.startswith("#")]


def gcloud(cmds, verb):
    return [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] and c[4] == verb]


def option(cmd, name):
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(name + "="))


# ----------------------------------------------------------------------------- dry runs
def test_train_creates_installs_and_runs_on_every_worker():
    out = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--project=my-proj", "--spot", "--dry-run", *OVERRIDES).stdout
    cmds = commands(out)
    [describe] = gcloud(cmds, "describe")
    [create] = gcloud(cmds, "create")
    assert create[5] == "lnpo-v5p"
    for flag in ("--zone=us-east5-a", "--accelerator-type=v5p-64", "--version=v2-alpha-tpuv5", "--project=my-proj",
                 "--spot"):
        assert flag in create, flag
    assert "--zone=us-east5-a" in describe and "--project=my-proj" in describe
    [scp] = gcloud(cmds, "scp")
    assert "--worker=all" in scp
    install, train = gcloud(cmds, "ssh")
    assert "--worker=all" in install and "--worker=all" in train
    assert "pip install" in option(install, "--command") and "-e ~/lnpo" in option(install, "--command")
    remote = option(train, "--command")
    main = shlex.split(remote.split("lnpo_run() {", 1)[1].split(";", 1)[0])
    assert main == ["python", "-m", "lnpo.main", "--config=configs/lndpo.py", "--workdir=/mnt/shared/runs/lndpo-8b",
                    "--config.model.path=/mnt/shared/llama-8b-sft", "--config.mesh.shape=(1,-1,1)",
                    "--config.loss.beta=0.1"]
    assert "tee -a ~/lnpo-logs/lndpo-8b.log" in remote  # worker 0 streams, every worker logs
    # order: create, then install, then run
    order = [c[4] for c in cmds if c[0] == "gcloud"]
    assert order == ["describe", "create", "scp", "ssh", "ssh"]
    assert "recreate it and rerun" in out


def test_remote_commands_are_valid_bash():
    out = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--dry-run", "--env=LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2",
             *OVERRIDES).stdout
    for cmd in gcloud(commands(out), "ssh"):
        remote = option(cmd, "--command")
        assert subprocess.run(["bash", "-n", "-c", remote], capture_output=True).returncode == 0, remote
    assert "export 'LIBTPU_INIT_ARGS=--xla_tpu_a=1 --xla_tpu_b=2'" in remote


def test_remote_run_streams_worker0_and_returns_lnpo_exit_status(tmp_path):
    """Run the worker command locally: a fake venv whose python records its argv and exits 75."""
    out = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--dry-run", *OVERRIDES, state="READY").stdout
    [train] = gcloud(commands(out), "ssh")
    remote = option(train, "--command")
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    venv = home / "lnpo-venv" / "bin"
    for d in (venv, home / "lnpo", bin_):
        d.mkdir(parents=True)
    (venv / "activate").write_text(f'export PATH="{venv}:$PATH"\n')
    (venv / "python").write_text('#!/usr/bin/env bash\necho "argv: $*"\nexit 75\n')
    (bin_ / "curl").write_text("#!/usr/bin/env bash\nexit 7\n")  # no metadata server: worker 0
    for f in (venv / "python", bin_ / "curl"):
        f.chmod(0o755)
    env = dict(os.environ, HOME=str(home), PATH=f"{bin_}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 75
    expected = ("argv: -m lnpo.main --config=configs/lndpo.py --workdir=/mnt/shared/runs/lndpo-8b "
                "--config.model.path=/mnt/shared/llama-8b-sft --config.mesh.shape=(1,-1,1) --config.loss.beta=0.1")
    assert expected in proc.stdout
    assert expected in (home / "lnpo-logs" / "lndpo-8b.log").read_text()
    # not installed: a clear message and exit 3
    shutil.rmtree(home / "lnpo-venv")
    proc = subprocess.run(["bash", "-c", remote], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3 and "install.sh" in proc.stdout


def test_train_reuses_a_ready_slice_and_recreates_a_preempted_one():
    cmds = commands(sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--dry-run", state="READY").stdout)
    assert [c[4] for c in cmds if c[0] == "gcloud"] == ["describe", "ssh"]
    cmds = commands(sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--install", "--dry-run", state="READY").stdout)
    assert [c[4] for c in cmds if c[0] == "gcloud"] == ["describe", "scp", "ssh", "ssh"]
    cmds = commands(sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--dry-run", state="PREEMPTED").stdout)
    assert [c[4] for c in cmds if c[0] == "gcloud"] == ["describe", "delete", "create", "scp", "ssh", "ssh"]


def test_create_install_teardown():
    cmds = commands(sh(f"{TPU}/create.sh", "--name=s", "--zone=europe-west4-b", "--accelerator-type=v4-32",
                       "--dry-run").stdout)
    [create] = gcloud(cmds, "create")
    assert "--accelerator-type=v4-32" in create and "--version=tpu-ubuntu2204-base" in create
    assert "--zone=europe-west4-b" in create
    cmds = commands(sh(f"{TPU}/install.sh", "--name=s", "--zone=z", "--jax-spec=jax[tpu]==0.7.2",
                       "--setup=sudo mount /dev/sdb /mnt", "--dry-run").stdout)
    [ssh] = gcloud(cmds, "ssh")
    assert "'jax[tpu]==0.7.2'" in option(ssh, "--command") and "(sudo mount /dev/sdb /mnt)" in option(ssh, "--command")
    cmds = commands(sh(f"{TPU}/teardown.sh", "--slices=a,b", "--zone=z", "--dry-run").stdout)
    assert cmds == [["gcloud", "compute", "tpus", "tpu-vm", "delete", n, "--zone=z", "--quiet"] for n in "ab"]


def test_sweep_round_robin_from_file_and_stdin(tmp_path):
    lines = [f"python -m lnpo.main --config=configs/dpo.py --workdir=/w/dpo-{i} --config.loss.beta=0.{i}"
             for i in range(1, 6)]
    runs = tmp_path / "runs.txt"
    runs.write_text("# from lnpo.sweep --print_commands\n" + "\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]))
    for source, stdin in ((str(runs), None), ("-", "\n".join(lines) + "\n")):
        out = sh(f"{TPU}/sweep.sh", "--slices=s1,s2", "--zone=z", "--accelerator-type=v5p-8", f"--commands={source}",
                 "--dry-run", state="READY", stdin=stdin).stdout
        per_slice: dict[str, list[str]] = {}
        for cmd in gcloud(commands(out), "ssh"):
            main = option(cmd, "--command").split("lnpo_run() {", 1)[1].split(";", 1)[0].strip()
            per_slice.setdefault(cmd[5], []).append(main)
        assert per_slice == {"s1": [lines[0], lines[2], lines[4]], "s2": [lines[1], lines[3]]}
    bad = sh(f"{TPU}/sweep.sh", "--slices=s1", "--zone=z", "--commands=-", "--dry-run", stdin="rm -rf /\n",
             check=False)
    assert bad.returncode == 2 and "not an lnpo.main command" in bad.stderr


def test_usage_and_missing_flags():
    for script in ("create.sh", "install.sh", "train.sh", "sweep.sh", "teardown.sh"):
        proc = sh(f"{TPU}/{script}", "--help")
        assert proc.stdout.startswith("usage: ") and "--dry-run" in proc.stdout, script
    proc = sh(f"{TPU}/train.sh", "--name=s", "--zone=z", "--dry-run", check=False)
    assert proc.returncode == 2 and "--config is required" in proc.stderr
    proc = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, "--bogus", check=False)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    proc = sh(f"{TPU}/create.sh", "--name=s", "--zone=z", "--accelerator-type=tpu9-8", "--dry-run", check=False)
    assert proc.returncode == 2 and "no default --version for accelerator type 'tpu9-8'" in proc.stderr
    proc = sh(f"{TPU}/train.sh", "--name=s", "--zone=z", "--cmd=rm -rf /", "--dry-run", check=False)
    assert proc.returncode == 2 and "must start with 'python -m lnpo.main '" in proc.stderr


# ----------------------------------------------------------------------------- real loops, fake gcloud
FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A stand-in for gcloud: logs its calls; one slice state per name under $FAKE/state-<name>.
echo "$*" >> "$FAKE/calls"
name="$5"
case "$4" in
  describe) cat "$FAKE/state-$name" 2>/dev/null || { echo "NOT_FOUND" >&2; exit 1; } ;;
  create)
    n=$(cat "$FAKE/creates-$name" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE/creates-$name"
    if (( n < ${FAKE_CREATE_FAILS:-0} )); then echo "no capacity" >&2; exit 1; fi
    echo READY > "$FAKE/state-$name" ;;
  delete) rm -f "$FAKE/state-$name" ;;
  scp) ;;
  ssh)
    if [[ "$*" == *lnpo.main* ]]; then
      n=$(cat "$FAKE/runs-$name" 2>/dev/null || echo 0); echo $((n + 1)) > "$FAKE/runs-$name"
      if (( n < ${FAKE_PREEMPTIONS:-0} )); then echo PREEMPTED > "$FAKE/state-$name"; exit 255; fi
      exit "${FAKE_RC:-0}"
    fi ;;
esac
"""


@pytest.fixture()
def fake_gcloud(tmp_path):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "gcloud").write_text(FAKE_GCLOUD)
    (bin_ / "gcloud").chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.py").write_text("")
    env = {"PATH": f"{bin_}:{os.environ['PATH']}", "FAKE": str(tmp_path), "LNPO_POLL_S": "0",
           "TMPDIR": str(tmp_path)}
    return tmp_path, env, f"--src={src}"


def test_train_reruns_after_preemption(fake_gcloud):
    tmp, env, src = fake_gcloud
    proc = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, src, env={**env, "FAKE_PREEMPTIONS": "2"})
    calls = [c.split()[3] for c in (tmp / "calls").read_text().splitlines()]
    # create + install + run (preempted) twice over, then the third run completes
    runs = [c for c in (tmp / "calls").read_text().splitlines() if "lnpo.main" in c]
    assert len(runs) == 3 and all("--workdir=/mnt/shared/runs/lndpo-8b" in r for r in runs)
    assert calls.count("create") == 3 and calls.count("delete") == 2 and calls.count("scp") == 3
    assert "restart 2/20" in proc.stdout


def test_train_retries_slice_creation(fake_gcloud):
    tmp, env, src = fake_gcloud
    proc = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, src, env={**env, "FAKE_CREATE_FAILS": "2"})
    assert (tmp / "creates-lnpo-v5p").read_text().strip() == "3"
    assert (tmp / "runs-lnpo-v5p").read_text().strip() == "1"
    assert "could not create slice lnpo-v5p" in proc.stdout


def test_train_stops_on_a_real_failure_and_after_max_restarts(fake_gcloud):
    tmp, env, src = fake_gcloud
    proc = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, src, env={**env, "FAKE_RC": "1"}, check=False)
    assert proc.returncode == 1 and "not retrying" in proc.stdout
    (tmp / "calls").unlink()
    (tmp / "runs-lnpo-v5p").unlink()
    proc = sh(f"{TPU}/train.sh", *SLICE, *TRAIN, src, "--max-restarts=1", env={**env, "FAKE_PREEMPTIONS": "5"},
              check=False)
    assert proc.returncode != 0 and "giving up after 1 restarts" in proc.stdout
    assert (tmp / "runs-lnpo-v5p").read_text().strip() == "2"


def test_sweep_runs_slices_in_parallel(fake_gcloud):
    tmp, env, src = fake_gcloud
    lines = [f"python -m lnpo.main --config=configs/ipo.py --workdir=/w/ipo-{i}" for i in range(3)]
    proc = sh(f"{TPU}/sweep.sh", "--slices=a,b", "--zone=z", "--accelerator-type=v5e-16", src, "--commands=-",
              stdin="\n".join(lines), env={**env, "FAKE_PREEMPTIONS": "1"})
    calls = (tmp / "calls").read_text().splitlines()
    runs = {name: [c for c in calls if c.split()[4] == name and "lnpo.main" in c] for name in "ab"}
    assert (tmp / "runs-a").read_text().strip() == "3"  # ipo-0 preempted once, rerun, then ipo-2
    assert (tmp / "runs-b").read_text().strip() == "2"  # ipo-1 preempted once, rerun
    assert all("--version=v2-alpha-tpuv5-lite" in c for c in calls if " create " in c)
    assert "/w/ipo-1" in runs["b"][0] and "/w/ipo-2" in runs["a"][-1]
    assert "[a] # slice a: run 1/3" in proc.stdout and "[b] # slice b: run 2/3" in proc.stdout


# ----------------------------------------------------------------------------- SLURM
def test_sbatch_one_process_per_gpu():
    out = sh(SBATCH, *TRAIN, "--venv=/opt/lnpo-venv", "--repo=/home/me/lnpo", "--dry-run", *OVERRIDES,
             env={"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8"}).stdout
    [cmd] = commands(out)
    assert cmd[:4] == ["srun", "--nodes=4", "--ntasks-per-node=8", "--kill-on-bad-exit=1"]
    assert cmd[4:6] == ["bash", "-c"]
    inner = cmd[6]
    assert inner.startswith("cd /home/me/lnpo && source /opt/lnpo-venv/bin/activate && exec python -m lnpo.main ")
    assert shlex.split(inner.split("exec ", 1)[1]) == [
        "python", "-m", "lnpo.main", "--config=configs/lndpo.py", "--workdir=/mnt/shared/runs/lndpo-8b",
        "--config.model.path=/mnt/shared/llama-8b-sft", "--config.mesh.shape=(1,-1,1)", "--config.loss.beta=0.1"]
    assert "JAX_LOCAL_DEVICE_IDS" not in inner
    assert subprocess.run(["bash", "-n", "-c", inner]).returncode == 0


def test_sbatch_one_process_per_node_and_directives():
    out = sh(SBATCH, *TRAIN, "--per-node", "--nodes=2", "--gpus-per-node=4", "--dry-run").stdout
    [cmd] = commands(out)
    assert "--ntasks-per-node=1" in cmd and "--nodes=2" in cmd
    assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3 && exec python -m lnpo.main" in cmd[-1]
    text = open(SBATCH).read()
    for directive in ("#SBATCH --nodes=", "#SBATCH --gpus-per-node=", "#SBATCH --requeue", "#SBATCH --signal=TERM@"):
        assert directive in text
    proc = sh(SBATCH, "--workdir=/w", "--dry-run", check=False)
    assert proc.returncode == 2 and "--config is required" in proc.stderr
