"""Multi-host correctness with several processes on localhost (JAX's multi-process runtime, gloo).

Each test's reference is one process: the global batch it builds, the run it trains
uninterrupted, the reference cache it computes alone.
"""

from __future__ import annotations

import glob
import os
import time

import numpy as np
import pytest
from train_helpers import finish, free_port, losses_of, run_processes, small_config, start_processes

from lnpo.data import PairIterator
from lnpo.models import preflight
from lnpo.train import trainer
from lnpo.train.run import run

# ----------------------------------------------------------------------------- the global batch
BATCH = """
import numpy as np
from jax.experimental import multihost_utils
from lnpo import parallel
from lnpo.data import PairIterator
from lnpo.models import preflight
from lnpo.train import trainer
from train_helpers import small_config
assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
config = small_config(MODEL, TASK)
train_ds, _ = trainer.prepare_data(config, preflight.load_tokenizer(MODEL), embedded_paths=None)
mesh = parallel.make_mesh((2, 2, 1))  # data x fsdp = 4 shards of the batch axis, 2 per process
ref = {"chosen": np.arange(len(train_ds), dtype=np.float32),
       "rejected": -np.arange(len(train_ds), dtype=np.float32) - 0.5}
out = {}
for layout in ("padded", "packed", "shared_prompt"):
    config.data.layout = layout
    it = PairIterator(train_ds, global_batch=8, micro_batches=2, layout=layout, seq_len=trainer.row_length(config),
                      seed=3, process_index=jax.process_index(), process_count=2, row_multiple=2)
    for step in range(3):
        indices = it.next_indices()
        local = it.build(indices)
        local.update(trainer._cached_reference_slice(ref, indices, 2, parallel.process_batch_group(mesh)))
        batch = trainer.to_global(local, mesh, parallel.process_batch_group(mesh)[1])
        full = multihost_utils.process_allgather(batch, tiled=True)
        for key, value in full.items():
            out[f"{layout}/{step}/{key}"] = np.asarray(value)
if jax.process_index() == 0:
    np.savez(OUT, **out)
print("RESULT" + json.dumps({"process": jax.process_index()}))
"""


def _sequences(batch: dict, micro: int) -> dict[int, tuple]:
    """Micro-batch ``micro``'s completion sequences by seq_index: their targets and positions, in order."""
    seq, targets, positions = (np.asarray(batch[k][micro]).reshape(-1) for k in ("seq_index", "targets", "positions"))
    return {int(s): (tuple(targets[seq == s]), tuple(positions[seq == s])) for s in np.unique(seq) if s >= 0}


@pytest.mark.slow
def test_two_hosts_assemble_the_single_process_global_batch(tmp_path, tiny_sft_dir, task_files, simulated_devices):
    out = str(tmp_path / "global.npz")
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nOUT={out!r}\n"
    assert run_processes(BATCH, 2, head=head, env_extra=simulated_devices(2)) == [{"process": 0}, {"process": 1}]
    hosts = np.load(out)

    config = small_config(tiny_sft_dir, task_files)
    train_ds, _ = trainer.prepare_data(config, preflight.load_tokenizer(tiny_sft_dir), embedded_paths=None)
    ref = {"chosen": np.arange(len(train_ds), dtype=np.float32),
           "rejected": -np.arange(len(train_ds), dtype=np.float32) - 0.5}
    checked = 0
    for layout in ("padded", "packed", "shared_prompt"):
        config.data.layout = layout
        it = PairIterator(train_ds, global_batch=8, micro_batches=2, layout=layout,
                          seq_len=trainer.row_length(config), seed=3, process_index=0, process_count=1, row_multiple=4)
        for step in range(3):
            indices = it.next_indices()
            one = it.build(indices)
            one.update(trainer._cached_reference_slice(ref, indices, 2, (0, 1)))
            two = {k: hosts[f"{layout}/{step}/{k}"] for k in one}
            # Which pairs, their validity and their cached reference log-probs: identical.
            for key in ("example_valid", "ref_chosen", "ref_rejected"):
                np.testing.assert_array_equal(two[key], one[key], err_msg=f"{layout} step {step} {key}")
            if layout == "padded":  # one row per sequence, in pair order: the very same arrays
                for key in one:
                    np.testing.assert_array_equal(two[key], one[key], err_msg=f"{layout} step {step} {key}")
            for micro in range(2):  # packed rows differ by host; every sequence's tokens and positions do not
                seqs = _sequences(one, micro)
                assert sorted(seqs) == list(range(8)), sorted(seqs)
                assert _sequences(two, micro) == seqs, f"{layout} step {step} micro-batch {micro}"
                checked += 1
    assert checked == 18


# ----------------------------------------------------------------------------- checkpoints
TRAIN = """
from train_helpers import small_config
from lnpo.train.run import run
summary = run(small_config(MODEL, TASK, **OVERRIDES), WORKDIR)
print("RESULT" + json.dumps({"steps": summary["steps"], "devices": jax.device_count()}))
"""

SINGLE_TRAIN = """
import json, sys
sys.path.insert(0, "tests/train")
import jax
""" + TRAIN


@pytest.mark.slow
def test_checkpoints_move_between_process_counts_and_meshes(tmp_path, tiny_sft_dir, task_files, simulated_devices):
    workdir = str(tmp_path / "moving")
    # A constant schedule, so launches asking for 2, 3 and 4 steps train one 4-step run.
    base = {"reference.mode": "in_step", "train.checkpoint_every": 1, "optim.schedule": "constant"}
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nWORKDIR={workdir!r}\n"

    def overrides(steps, mesh):
        return f"OVERRIDES={dict(base, **{'train.steps': steps, 'mesh.shape': mesh})!r}\n"

    # 2 processes x 1 device, FSDP over both.
    outs = run_processes(TRAIN, 2, head=head + overrides(2, (1, 2, 1)))
    assert outs == [{"steps": 2, "devices": 2}] * 2
    # 1 process x 2 devices, tensor-parallel: the FSDP-sharded checkpoint is resharded on restore.
    from train_helpers import result_of, run_python

    proc = run_python(head + overrides(3, (1, 1, 2)) + SINGLE_TRAIN, env_extra=simulated_devices(2))
    assert result_of(proc) == {"steps": 3, "devices": 2}
    # 2 processes x 2 devices, data x tensor.
    outs = run_processes(TRAIN, 2, head=head + overrides(4, (2, 1, 2)), env_extra=simulated_devices(2))
    assert outs == [{"steps": 4, "devices": 4}] * 2

    single = str(tmp_path / "single")
    run(small_config(tiny_sft_dir, task_files, **dict(base, **{"train.steps": 4})), single)
    moved, one = losses_of(workdir), losses_of(single)
    assert sorted(moved) == sorted(one) == [1, 2, 3, 4]
    for step in one:
        assert moved[step] == pytest.approx(one[step], rel=2e-5, abs=2e-6), step


@pytest.mark.slow
def test_a_context_axis_across_hosts_trains_like_one_process(tmp_path, tiny_sft_dir, task_files, simulated_devices):
    """2 processes x 2 devices on a (1, 1, 1, 4) mesh: the context axis spans both hosts, so they form
    one batch group and feed the same rows (each chip a quarter of every row's positions, ring
    attention passing key blocks between the hosts); the losses of 3 steps (cached reference) equal
    one process's on one device."""
    base = {"train.steps": 3, "optim.schedule": "constant", "model.attn_implementation": "ring"}
    workdir = str(tmp_path / "context")
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\nWORKDIR={workdir!r}\n"
    head += f"OVERRIDES={dict(base, **{'mesh.shape': (1, 1, 1, 4)})!r}\n"
    assert run_processes(TRAIN, 2, head=head, env_extra=simulated_devices(2)) == [{"steps": 3, "devices": 4}] * 2
    single = str(tmp_path / "single")
    run(small_config(tiny_sft_dir, task_files, **base), single)
    spread, one = losses_of(workdir), losses_of(single)
    assert sorted(spread) == sorted(one) == [1, 2, 3]
    for step in one:
        assert spread[step] == pytest.approx(one[step], rel=2e-5, abs=2e-6), step


# ----------------------------------------------------------------------------- the reference cache
CACHED = """
from train_helpers import small_config
from lnpo.train import trainer
from lnpo.train.run import run
calls = []
compute = trainer.compute_reference
def counted(*args, **kwargs):
    calls.append(len(args[2]))
    return compute(*args, **kwargs)
trainer.compute_reference = counted
run(small_config(MODEL, TASK, **OVERRIDES), WORKDIR)
print("RESULT" + json.dumps({"computed": calls}))
"""


@pytest.mark.slow
def test_reference_cache_is_computed_once_and_read_by_every_host(tmp_path, tiny_sft_dir, task_files):
    cache = str(tmp_path / "cache")
    base = {"reference.mode": "cache", "reference.cache_dir": cache, "train.steps": 2, "mesh.shape": (1, 2, 1),
            "train.checkpoint_every": 100}
    head = f"MODEL={tiny_sft_dir!r}\nTASK={task_files!r}\n"
    # First run: one pass per dataset (train, eval), the two processes sharing it; one file each.
    outs = run_processes(CACHED, 2, head=head + f"WORKDIR={str(tmp_path / 'a')!r}\nOVERRIDES={base!r}\n")
    assert outs == [{"computed": [64, 16]}] * 2
    files = sorted(glob.glob(os.path.join(cache, "*")))
    assert len(files) == 2 and all(f.endswith(".npz") for f in files), files
    stamps = [os.stat(f).st_mtime_ns for f in files]
    # A sweep's next run (another beta): every host reads the files, none computes.
    outs = run_processes(CACHED, 2, head=head + f"WORKDIR={str(tmp_path / 'b')!r}\n"
                                              f"OVERRIDES={dict(base, **{'loss.beta': 0.5})!r}\n")
    assert outs == [{"computed": []}] * 2
    assert [os.stat(f).st_mtime_ns for f in files] == stamps

    # One process alone computes the same files: same keys (the key does not depend on the
    # process count or the mesh) and the same values.
    alone = str(tmp_path / "alone")
    run(small_config(tiny_sft_dir, task_files, **dict(base, **{"reference.cache_dir": alone,
                                                                "mesh.shape": (1, 1, 1)})), str(tmp_path / "c"))
    assert [os.path.basename(f) for f in sorted(glob.glob(os.path.join(alone, "*")))] == \
        [os.path.basename(f) for f in files]
    for f in files:
        with np.load(f) as two, np.load(os.path.join(alone, os.path.basename(f))) as one:
            for key in ("chosen", "rejected"):
                np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- a dead worker
DIES = """
import os, sys
sys.path.insert(0, "tests/train")
from lnpo.train import logger as logger_mod
original = logger_mod.RunLogger.log
def log(self, step, metrics):
    original(self, step, metrics)
    if step == 2 and int(os.environ["JAX_PROCESS_ID"]) == DEAD:
        os._exit(9)  # killed: no error, no goodbye
logger_mod.RunLogger.log = log
from lnpo import main
main.main(["lnpo.main", "--config=configs/lndpo.py", f"--workdir={WORKDIR}", *FLAGS])
"""


@pytest.mark.slow
@pytest.mark.parametrize("dead", [1, 0], ids=["worker", "coordinator"])
def test_a_dead_worker_stops_the_others_with_a_clear_error(tmp_path, tiny_sft_dir, task_files, dead):
    flags = [f"--config.model.path={tiny_sft_dir}", f"--config.data.source={task_files['train_prefs']}",
             "--config.data.eval_source=", "--config.train.eval_batches=0", "--config.eval.enabled=False",
             "--config.train.steps=50", "--config.train.global_batch=8", "--config.train.log_every=1",
             "--config.train.checkpoint_every=100", "--config.reference.mode=in_step",
             "--config.distributed.heartbeat_timeout_s=10", "--config.distributed.initialization_timeout_s=120"]
    code = f"WORKDIR={str(tmp_path / 'run')!r}\nFLAGS={flags!r}\nDEAD={dead}\n" + DIES
    port = free_port()
    env = [{"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
           for i in range(2)]
    procs = start_processes([code, code], env_per_process=env)
    procs[dead].wait(timeout=600)
    died_at = time.monotonic()
    (rc_dead, _, err_dead), (rc_live, _, err) = [finish([procs[i]], timeout=300)[0] for i in (dead, 1 - dead)]
    waited = time.monotonic() - died_at
    assert rc_dead == 9, err_dead[-3000:]
    assert rc_live != 0, err[-3000:]
    assert f"lnpo: joining the multi-process job at 127.0.0.1:{port}" in err, err[-3000:]
    assert waited < 120, f"the surviving process took {waited:.0f} s to stop"
    if dead == 1:  # the coordinator reports the lost worker in lnpo's one line
        assert rc_live == 3, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("lnpo: error:")]
        assert len(lines) == 1 and "process 0 of 2 lost another process of this job" in lines[0], err[-3000:]
    else:  # a worker that loses the coordinator is stopped by JAX's runtime or reports it itself
        assert "lost another process" in err or "distributed service detected fatal errors" in err, err[-3000:]
