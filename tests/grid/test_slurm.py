"""The ``slurm`` executor on a real single-node Slurm started here by ``scripts/slurm-local.sh``.

The Slurm is real (munged, slurmdbd with MariaDB, slurmctld, slurmd), so job arrays, resources,
``scancel``, requeue and ``sacct`` behave as on a cluster. Where Slurm is not installed or the
tests do not run as root, these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoseg.grid.executor_slurm import SlurmResources, _expand_ids, job_file, query_states
from autoseg.grid.executors import ExecutorOptions, RunTask
from autoseg.grid.store import Store
from autoseg.records import FoldRecord

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
NEEDED = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "sacct", "scancel", "slurmdbd", "mariadbd")


def _why_no_slurm() -> str | None:
    missing = [c for c in NEEDED if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]
    if missing:
        return (f"Slurm is not installed here (missing {', '.join(missing)}); `bash scripts/setup.sh test` "
                "installs Debian's slurm-wlm, munge, slurmdbd and mariadb-server where it runs as root with apt-get")
    if os.geteuid() != 0:
        return "the single-node Slurm of scripts/slurm-local.sh runs its daemons as root; these tests are not root"
    return None


@pytest.fixture(scope="session")
def slurm():
    """A running single-node Slurm (started here and stopped at the end, or one already running, left running)."""
    reason = _why_no_slurm()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"}
    already = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, env=env).returncode == 0
    if not already:
        proc = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, f"scripts/slurm-local.sh start failed:\n{proc.stdout}\n{proc.stderr}"
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, env=env,
                          check=True).stdout.strip().split("=", 1)[1]
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PATH")}
    os.environ["SLURM_CONF"], os.environ["PATH"] = conf, env["PATH"]
    try:
        yield conf
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not already:
            subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120)


def _sacct(job_id: str) -> list[tuple[str, str]]:
    """(job id, state) rows of every attempt of ``job_id`` (requeued ones included), from Slurm's accounting."""
    out = subprocess.run(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State", "-j", job_id],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if line.strip()]


def _wait(predicate, timeout: float, what: str, poll: float = 0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- without Slurm ---------------------------------------------------------------------------------

def test_pending_array_ids_are_expanded():
    # sacct prints the not yet started tasks of an array as one row
    assert _expand_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert _expand_ids("12_[3]") == ["12_3"]
    assert _expand_ids("12_4") == ["12_4"]
    assert _expand_ids("13") == ["13"]


def test_resources_from_executor_options():
    res = SlurmResources.from_options(ExecutorOptions(jobs=3, device="cuda", extra={
        "partition": "gpu", "cpus_per_task": "4", "mem_gb": 16, "timeout_min": 90}))
    p = res.submitit_parameters()
    assert (p["partition"], p["cpus_per_task"], p["mem"], p["time"]) == ("gpu", 4, "16384M", 90)
    assert p["gpus_per_node"] == 1  # --device cuda: one GPU per run unless told otherwise
    assert p["array_parallelism"] == 3  # --jobs caps the runs at once
    assert "export OMP_NUM_THREADS=4 MKL_NUM_THREADS=4 nnUNet_def_n_proc=4" in p["setup"]
    cpu = SlurmResources.from_options(ExecutorOptions()).submitit_parameters()
    assert "gpus_per_node" not in cpu and "array_parallelism" not in cpu and "partition" not in cpu
    with pytest.raises(ValueError, match="unknown slurm executor option.*partiton.*known: partition"):
        SlurmResources.from_options(ExecutorOptions(extra={"partiton": "gpu"}))
    with pytest.raises(ValueError, match="cpus_per_task must be a number, got 'many'"):
        SlurmResources.from_options(ExecutorOptions(extra={"cpus_per_task": "many"}))
    with pytest.raises(ValueError, match="timeout_min must be at least 1"):
        SlurmResources.from_options(ExecutorOptions(extra={"timeout_min": 0}))


# --- on the single-node Slurm ------------------------------------------------------------------------

def test_node_and_submitit_job_array(slurm, tmp_path):
    import submitit

    # the node declares this machine's real cores
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()
    assert int(cpus[0]) == len(os.sched_getaffinity(0)) or int(cpus[0]) == os.cpu_count()
    ex = submitit.SlurmExecutor(folder=str(tmp_path / "%j"))
    ex.update_parameters(cpus_per_task=1, time=5, mem="500M")
    # each array task reads Slurm's view of itself (os.getenv pickles by reference: nothing of the tests to import)
    names = ["SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_CPUS_PER_TASK"]
    jobs = ex.map_array(os.getenv, names)
    array_id = jobs[0].job_id.split("_")[0]
    assert [j.result() for j in jobs] == [array_id, "1", "1"]
    assert [j.job_id for j in jobs] == [f"{array_id}_{i}" for i in range(3)]
    # a result is on disk a moment before Slurm has finished the job and told its accounting
    _wait(lambda: query_states(j.job_id for j in jobs) == {j.job_id: "COMPLETED" for j in jobs}, 60,
          "Slurm to report the array COMPLETED")
    assert _sacct(jobs[0].job_id) == [(jobs[0].job_id, "COMPLETED")]


def test_status_of_queued_runs_comes_from_slurm(slurm, tmp_path):
    """A run Slurm holds shows as Slurm says (the store alone would say pending), and once the job is gone
    the store's record decides again."""
    from autoseg.grid.status import store_status

    store = Store(tmp_path / "store")
    rec = FoldRecord(dataset="Dataset001_X", configuration="3d_fullres", trainer="nnUNetTrainer_autoseg_dice", fold=0,
                     loss="dice", executor="slurm")
    sbatch = ["sbatch", "--parsable", "-o", "/dev/null", "-c", "1", "--mem=100M"]
    held = subprocess.run(sbatch + ["--hold", "--wrap", "sleep 1"], capture_output=True, text=True,
                          check=True).stdout.strip()
    try:
        rec.job_id = held
        store.write(rec)
        assert store_status(store)[1] == ["pending"]
        subprocess.run(["scancel", held], check=True)
        running = subprocess.run(sbatch + ["--wrap", "sleep 60"], capture_output=True, text=True,
                                 check=True).stdout.strip()
        rec.job_id = running
        store.write(rec)
        _wait(lambda: query_states([running]).get(running) == "RUNNING", 60, f"job {running} to run")
        assert store.view(rec.run_id) == "pending"  # the record alone does not know
        assert store_status(store)[1] == ["running"]
        subprocess.run(["scancel", running], check=True)
        _wait(lambda: query_states([running]).get(running) == "CANCELLED", 60, f"job {running} to be cancelled")
        assert store_status(store)[1] == ["pending"]  # the job is gone: the record decides
    finally:
        subprocess.run(["scancel", held], capture_output=True)


def test_rerun_waits_for_a_job_slurm_still_holds(slurm, tmp_path):
    """A run whose job of an earlier invocation is still queued gets no second job: the executor waits for
    it, and releases it if that invocation stopped before releasing its held array."""
    from autoseg.grid.executor_slurm import SlurmExecutor

    store = Store(tmp_path / "store")
    held = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--mem=100M", "--hold", "--wrap", "sleep 1"],
                          capture_output=True, text=True, check=True).stdout.strip()
    rec = FoldRecord(dataset="Dataset001_X", configuration="3d_fullres", trainer="nnUNetTrainer_autoseg_dice", fold=0,
                     loss="dice", executor="slurm", job_id=held)
    store.write(rec)
    logs: list[str] = []
    ex = SlurmExecutor(ExecutorOptions(log=logs.append, extra={"poll_s": 0.5}))
    try:
        ex.submit([RunTask(run_id=rec.run_id, store=str(store.root), raw="r", preprocessed="p",
                           results=str(tmp_path / "results"))])
        assert ex.job_ids == {rec.run_id: held} and not (tmp_path / "results").exists()  # nothing submitted
        assert any(f"Slurm job {held} is PENDING; waiting for it" in m for m in logs)
        ex.wait()  # returns once Slurm says the job ended: it was released, and ran
    finally:
        subprocess.run(["scancel", held], capture_output=True)
    assert json.loads(job_file(store.root, rec.run_id).read_text())["final_state"] == "COMPLETED"
    assert _sacct(held) == [(held, "COMPLETED")]


def _record(store: Path, run_id: str) -> dict:
    return json.loads((store / run_id / "autoseg.json").read_text())


@pytest.mark.slow
def test_grid_on_slurm_survives_requeue_and_scancel(slurm, tmp_path):
    """2 losses on fold 0 through the slurm executor. While both train, one job is killed with scancel and
    the other gets Slurm's preemption signal (USR2: it checkpoints, requeues itself and resumes from
    nnU-Net's checkpoint). The command ends with one run done and one interrupted; the same command again
    finishes the grid without redoing the finished run and without losing its record."""
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "autoseg", "benchmark", "--loss", "dice,ce", "--folds", "0", "--budget", "smoke",
           "--epochs", "6", "--limit-cases", "10", "--work-dir", str(work), "--executor", "slurm",
           "--executor-option", "poll_s=1", "--executor-option", "timeout_min=30", "--executor-option", "mem_gb=3",
           "--json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", nnUNet_def_n_proc="1", PYTHONPATH=str(REPO))
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        store = work / "autoseg_store"
        results = work / "nnUNet_results"

        def jobs_running():
            files = sorted(store.glob("*/*/fold_0/slurm_job.json"))
            if len(files) < 2:
                return None
            ids = {f.parent.relative_to(store).as_posix(): json.loads(f.read_text())["job_id"] for f in files}
            states = query_states(ids.values())
            if all(states.get(j) == "RUNNING" for j in ids.values()):
                return ids
            return None

        ids = _wait(jobs_running, 240, "both runs to be RUNNING on Slurm", poll=0.5)
        preempted, cancelled = (next(r for r in ids if f"_{loss}__" in r) for loss in ("dice", "ce"))
        _wait(lambda: _record(store, cancelled)["status"] == "running", 120, f"{cancelled} to start training")
        subprocess.run(["scancel", ids[cancelled]], check=True)
        # preempt once nnU-Net has written a checkpoint to resume from
        _wait(lambda: (results / preempted / "checkpoint_latest.pth").is_file(), 120,
              f"a checkpoint of {preempted}", poll=0.1)
        subprocess.run(["scancel", "--signal=USR2", ids[preempted]], check=True)
        # Slurm makes a requeued job wait about two minutes before it may start again; release it now
        _wait(lambda: query_states([ids[preempted]]).get(ids[preempted]) == "PENDING", 60,
              f"{ids[preempted]} to be requeued")
        subprocess.run(["scontrol", "update", f"JobId={ids[preempted]}", "StartTime=now"], check=True)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
            subprocess.run(["scancel", "--name=autoseg"], capture_output=True)
    assert first.returncode == 0, err[-4000:]
    runs = {r["run_id"]: r for r in json.loads(out)["runs"]}
    assert runs[preempted]["state"] == "done" and runs[cancelled]["state"] == "interrupted", runs

    # what Slurm recorded: the preempted job ran twice (requeued, then completed), the other was cancelled
    assert [s for _, s in _sacct(ids[preempted])] == ["REQUEUED", "COMPLETED"]
    assert [s.split()[0] for _, s in _sacct(ids[cancelled])] == ["CANCELLED"]
    # the per-run resources reached Slurm: 1 CPU (the default) and mem_gb=3
    asked = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "AllocCPUS,ReqMem", "-j", ids[cancelled]],
                           capture_output=True, text=True, check=True).stdout.split()
    assert asked in (["1|3G"], ["1|3072M"])  # sacct shows whole GB as G
    info = json.loads(job_file(store, preempted).read_text())
    assert [a["restart_count"] for a in info["attempts"]] == [0, 1] and info["final_state"] == "COMPLETED"
    # one log for both attempts: the signal, submitit's requeue, then the worker resuming from the checkpoint
    err = Path(info["attempts"][1]["stderr"]).read_text()
    assert "Caught signal SIGUSR2" in err and "this job is preempted" in err
    log = Path(info["attempts"][1]["stdout"]).read_text()
    assert log.count("Starting with JobEnvironment") == 2 and "Requeued job" in log
    assert "resuming from checkpoint_latest.pth at epoch" in log or "running the validation only" in log
    assert _record(store, preempted)["attempts"] == 2
    assert (_record(store, preempted)["job_id"], _record(store, preempted)["executor"]) == (ids[preempted], "slurm")

    done_record = (store / preempted / "autoseg.json").read_bytes()
    status = subprocess.run([sys.executable, "-m", "autoseg", "benchmark", "status", "--work-dir", str(work), "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert {r["run_id"]: r["state"] for r in json.loads(status.stdout)["runs"]} == {
        preempted: "done", cancelled: "interrupted"}

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    runs = {r["run_id"]: r for r in json.loads(again.stdout)["runs"]}
    assert {r: v["state"] for r, v in runs.items()} == {preempted: "done", cancelled: "done"}
    assert (store / preempted / "autoseg.json").read_bytes() == done_record  # not redone, record intact
    assert _record(store, cancelled)["attempts"] == 2
    info = json.loads(job_file(store, cancelled).read_text())
    assert len(info["submissions"]) == 2 and info["final_state"] == "COMPLETED"
    assert len(_record(store, cancelled)["per_case"]) == 2  # the validation cases of fold 0 (10 cases, 5 folds)
