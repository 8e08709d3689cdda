"""``autoseg benchmark`` for real: a 2 losses x 2 folds x 2 seeds grid on 10 bundled cases with a tiny budget.

One grid is killed (SIGKILL of its process group) in the middle of a run, then two copies of the same
command are started at once: every run ends done exactly once, the killed one resumed from nnU-Net's
checkpoint, and the shared files are intact. Then a run that fails on purpose, one run at a time, the
submitit local executor, and the result store copied to a folder without checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import N_CASES

from autoseg.records import read_record

pytestmark = pytest.mark.slow

# 3 epochs of 2 iterations: checkpoint_latest.pth is written after each epoch but the last, so a kill
# between epochs leaves a run to resume
BUDGET = ["--budget", "smoke", "--epochs", "3", "--iterations", "2", "--limit-cases", str(N_CASES), "--device", "cpu"]
GRID = ["benchmark", "--loss", "dice", "--loss", "combo:alpha=0.3", "--folds", "0-1", "--seeds", "0-1", *BUDGET]


def _env(work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(nnUNet_def_n_proc="1", AUTOSEG_HOME=str(work))
    return env


def _cli(*args, env, timeout=900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoseg", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _records(store: Path) -> dict[str, object]:
    out = {}
    for path in sorted(store.rglob("autoseg.json")):
        rec = read_record(path)
        out[rec.run_id] = rec
    return out


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    work = tmp_path_factory.mktemp("grid_work")
    env = _env(work)
    args = [*GRID, "--work-dir", str(work), "--jobs", "2"]
    store = work / "autoseg_store"
    t0 = time.time()
    first = subprocess.Popen([sys.executable, "-m", "autoseg", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    killed_in = None
    try:
        deadline = time.time() + 900
        while time.time() < deadline and first.poll() is None:
            recs = _records(store) if store.is_dir() else {}
            done = [r for r in recs.values() if r.status == "done"]
            mid = [r for r in recs.values() if r.status == "running"
                   and (work / "nnUNet_results" / r.run_id / "checkpoint_latest.pth").is_file()
                   and not (work / "nnUNet_results" / r.run_id / "checkpoint_final.pth").is_file()]
            if done and mid:
                os.killpg(first.pid, signal.SIGKILL)
                killed_in = mid
                break
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert killed_in, "the grid ended before a run could be killed in its middle"
    before = _records(store)
    # what each killed run had trained up to its checkpoint: its resumed attempt carries that time
    trained = {r.run_id: (work / "nnUNet_results" / r.run_id / "checkpoint_latest.pth").stat().st_mtime
               - time.mktime(time.strptime(before[r.run_id].started, "%Y-%m-%dT%H:%M:%S")) for r in killed_in}
    t_kill = time.time() - t0
    # two copies of the same command at once
    copies = [subprocess.Popen([sys.executable, "-m", "autoseg", *args, "--json"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1800) for p in copies]
    print(f"grid: killed after {t_kill:.0f} s; two copies finished after {time.time() - t0:.0f} s in all")
    return {"work": work, "env": env, "store": store, "before": before, "killed": [r.run_id for r in killed_in],
            "trained": trained,
            "copies": [(p.returncode, o, e) for p, (o, e) in zip(copies, outs)]}


def test_killed_grid_finishes_each_run_exactly_once(grid):
    work, store = grid["work"], grid["store"]
    for code, out, err in grid["copies"]:
        assert code == 0, err[-3000:]
        json.loads(out)  # stdout holds one JSON object
    after = _records(store)
    # the same runs as the uninterrupted grid would have: its expansion, by the dry run
    dry = _cli(*GRID, "--work-dir", str(work), "--dry-run", "--json", env=grid["env"])
    assert dry.returncode == 0, dry.stderr[-3000:]
    planned = json.loads(dry.stdout)
    assert len(planned["runs"]) == 8 and {r["state"] for r in planned["runs"]} == {"done"}
    # the cost model's estimate of each run (nothing left to do, so nothing left to pay)
    assert all(r["estimated_seconds"] > 0 for r in planned["runs"]) and planned["estimated_seconds"] == 0
    assert set(after) == {r["run_id"] for r in planned["runs"]}
    assert {(r.loss, json.dumps(r.loss_args), r.fold, r.seed) for r in after.values()} == {
        (loss, args, fold, seed) for loss, args in (("dice", "{}"), ("combo", '{"alpha": 0.3}'))
        for fold in (0, 1) for seed in (0, 1)}
    for run_id, rec in after.items():
        fold_dir = work / "nnUNet_results" / run_id
        assert rec.status == "done" and rec.checkpoint == "final" and rec.epochs_completed == 3, run_id
        assert rec.per_case and rec.evaluation["rows"], run_id
        # the training curves travel with the record (reports from the store alone draw them)
        assert rec.curves["epoch"] == [0.0, 1.0, 2.0], run_id
        assert all(len(rec.curves[k]) == 3 for k in ("train_loss", "val_loss", "pseudo_dice", "epoch_time"))
        assert all(isinstance(v, float) and v == v for v in rec.curves["train_loss"]), run_id
        assert rec.device == "cpu" and rec.wall_seconds > 0 and rec.executor == "local"
        # at most one trainer (one nnU-Net training log) per attempt
        assert 1 <= len(list(fold_dir.glob("training_log_*.txt"))) <= rec.attempts, run_id
        old = grid["before"].get(run_id)
        if old is not None and old.done:
            assert rec.attempts == 1 and rec.finished == old.finished, f"{run_id} was redone"
        elif old is not None and old.status == "running":  # killed in its middle: resumed once
            assert rec.attempts == 2, run_id
            if run_id in grid["killed"]:
                assert "resuming from checkpoint_latest.pth" in (fold_dir / "autoseg_worker.log").read_text()
                # its wall time counts the killed attempt's training up to the checkpoint (1 s: whole seconds)
                assert rec.resumed_seconds == pytest.approx(max(0.0, grid["trained"][run_id]), abs=1.0), run_id
                assert rec.wall_seconds > rec.resumed_seconds, run_id
        else:  # not started before the kill: run once, by one of the two copies
            assert rec.attempts == 1, f"{run_id} ran {rec.attempts} times"
    # shared files are whole JSON
    pre = next((work / "nnUNet_preprocessed").glob("Dataset*"))
    for path in (pre / "nnUNetPlans.json", pre / "splits_final.json", work / "nnUNet_results" / "autoseg_trainers.json"):
        json.loads(path.read_text())
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    assert "3d_fullres_smoke_e3i2" in plans["configurations"]


def test_seeds_change_training(grid, tmp_path):
    """Seed 1 twice gives the same initial network, seed 2 another; the seed is in the trainer's name."""
    import torch

    from autoseg.paths import WorkDirs, configure_nnunet
    from autoseg.trainers.factory import make_trainer_class

    work = grid["work"]
    # trainers made here write their output folder: not into the grid's results
    configure_nnunet(WorkDirs(work / "nnUNet_raw", work / "nnUNet_preprocessed", tmp_path / "results"))
    pre = next((work / "nnUNet_preprocessed").glob("Dataset*"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((work / "nnUNet_raw" / pre.name / "dataset.json").read_text())

    def first_weights(seed):
        plans["continue_training"] = False
        cls = make_trainer_class("dice", {}, seed)
        t = cls(plans=plans, configuration="3d_fullres_smoke_e3i2", fold=0, dataset_json=dataset_json,
                device=torch.device("cpu"))
        t.initialize()
        return next(t.network.parameters()).detach().clone()

    a, b, c = first_weights(1), first_weights(1), first_weights(2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert make_trainer_class("dice", {}, 2).__name__ == "nnUNetTrainer_autoseg_dice_seed2"


def test_failed_run_is_recorded_and_the_rest_complete(grid):
    """ce with two class weights for three classes builds, and fails at its first training step."""
    work, env = grid["work"], grid["env"]
    args = ["benchmark", "--loss", "dice_ce", "--loss", "ce:weight=1;2", "--folds", "0", *BUDGET,
            "--work-dir", str(work), "--jobs", "1", "--json"]
    # a checkpoint cut short (nnU-Net killed while writing it, before autoseg wrote checkpoints atomically):
    # set aside, and the run starts again
    dataset = next(iter(grid["before"].values())).dataset
    cut = work / "nnUNet_results" / dataset / "nnUNetTrainer_autoseg_dice_ce__nnUNetPlans__3d_fullres_smoke_e3i2" / "fold_0"
    cut.mkdir(parents=True)
    (cut / "checkpoint_latest.pth").write_bytes(b"PK\x03\x04 cut short")
    proc = _cli(*args, env=env)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a failed run: the command says so
    runs = {r["loss"]: r for r in json.loads(proc.stdout)["runs"]}
    assert runs["dice_ce"]["state"] == "done"
    assert "checkpoint_latest.pth cannot be read" in (cut / "autoseg_worker.log").read_text()
    assert runs["ce"]["state"] == "failed" and "weight must have one entry per class (3), got 2" in runs["ce"]["error"]
    again = _cli(*args, env=env)
    assert "not retried without --retry-failed" in again.stderr
    rec = read_record(grid["store"] / runs["ce"]["run_id"])
    assert rec.attempts == 1 and rec.status == "failed"
    status = _cli("benchmark", "status", "--work-dir", str(work), env=env)
    assert status.returncode == 0, status.stderr
    assert "failed: " + runs["ce"]["run_id"] in status.stdout and "weight must have one entry" in status.stdout
    assert "] 9/10 done" in status.stdout  # progress bar: the 8 grid runs and dice_ce, of 10


def test_submitit_local_executor(grid):
    pytest.importorskip("submitit")
    work, env = grid["work"], grid["env"]
    proc = _cli("benchmark", "--loss", "dice_ce", "--folds", "1", *BUDGET, "--work-dir", str(work),
                "--executor", "submitit_local", "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = json.loads(proc.stdout)["runs"]
    rec = read_record(grid["store"] / run["run_id"])
    assert rec.done and rec.executor == "submitit_local" and rec.attempts == 1


def test_store_without_checkpoints_reports_the_same(grid, tmp_path):
    work, env = grid["work"], grid["env"]
    copy = tmp_path / "store_copy"
    shutil.copytree(grid["store"], copy, ignore=shutil.ignore_patterns(".*"))
    assert not list(copy.rglob("*.pth")) and not list(copy.rglob("*.nii.gz"))
    assert sum(f.stat().st_size for f in copy.rglob("*") if f.is_file()) < 20_000 * len(list(copy.rglob("*.json")))
    tables = {}
    for name, folder in (("results", work / "nnUNet_results"), ("store", copy)):
        out = tmp_path / f"report_{name}"
        # the store needs nothing else: no raw, preprocessed or prediction files (dataset.json is in it)
        extra = ["--preprocessed", str(work / "nnUNet_preprocessed")] if name == "results" else []
        proc = _cli("report", str(folder), "--out", str(out), "--bootstrap", "20", *extra, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        # every table but the run list, which names each run's folder and how its rows were obtained, and the
        # cost table's last column, which says where each number was read (the record, the training log)
        tables[name] = {f.name: sorted(line.rsplit(",", 1)[0] if f.name.startswith("cost_") else line
                                       for line in f.read_text().splitlines())
                        for f in (out / "tables").glob("*.csv") if f.name != "metrics_runs.csv"}
    assert len(tables["store"]["metrics.csv"]) > 1 and any(n.startswith("ranking_") for n in tables["store"])
    assert tables["store"] == tables["results"]
    # the training curves come from the records when there is no training log
    report = (tmp_path / "report_store" / "report.md").read_text()
    assert "Training curves" in report and "No training log or progress.png found" not in report
    assert list((tmp_path / "report_store").rglob("curves_*"))
    # a machine that never held a checkpoint: the same grid there is done, nothing trained
    fresh = tmp_path / "fresh_results"
    env2 = {**env, "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
            "nnUNet_results": str(fresh)}
    proc = _cli(*GRID, "--store", str(copy), "--json", env=env2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["submitted"] == 0 and result["skipped_done"] == 8
    # and its log does not name run folders this machine lacks as the runs it reuses
    assert proc.stderr.count("done in the store, not trained here") == 8, proc.stderr[-3000:]
    assert {r["state"] for r in result["runs"]} == {"done"}
    assert not list(fresh.rglob("*.pth"))
