"""The ``slurm`` executor: a grid's runs as one Slurm job array submitted through submitit, requeued on preemption or time-out.

Each run is one array task that runs :func:`autoseg.grid.worker.execute_path` (the same worker as
every other executor: it claims the run, resumes it from nnU-Net's ``checkpoint_latest.pth``,
records the outcome). Resources per run come from ``--executor-option`` (see
:class:`SlurmResources`). On Slurm's warning signal before a time-out or a preemption
(``--signal=USR2@signal_delay_s``, set by submitit), submitit calls :meth:`SlurmRun.checkpoint`
and requeues the job; the requeued job resumes the run from nnU-Net's latest checkpoint.

Where things are, per run: the id of its current job in its record (``job_id``, with
``executor="slurm"``), which ``autoseg benchmark status`` asks Slurm about, so the states of queued
and running runs come from Slurm; every submission and attempt in ``<store>/<run_id>/slurm_job.json``;
and submitit's logs (stdout, stderr, pickles) in ``<results>/submitit/<job id>/``, a folder per
run (per array task) whose paths the same file lists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from autoseg.grid.executors import Executor, ExecutorOptions, RunTask, register_executor
from autoseg.grid.store import Store
from autoseg.io import update_json
from autoseg.records import now_stamp

JOB_FILE = "slurm_job.json"

#: Slurm job states in which the job still holds or waits for resources (it may still change the run).
#: PREEMPTED is final in Slurm (a job preempted with PreemptMode=REQUEUE shows REQUEUED, then PENDING).
ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
         "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}
#: how an alive job shows in ``autoseg benchmark status``
VIEW = {"RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running"}


class SlurmError(RuntimeError):
    """Slurm refused or could not be reached (the message carries the command and what it said)."""


@dataclass
class SlurmResources:
    """What each run asks of Slurm: ``--executor-option key=value`` for each field."""

    partition: str | None = None
    cpus_per_task: int = 1  # also the run's torch/OpenMP threads
    mem_gb: float | None = None  # None: the partition's default memory per CPU
    timeout_min: int = 24 * 60  # the job's time limit; a run that reaches it is requeued and resumes
    gpus_per_node: int | None = None  # default: 1 with --device cuda, else 0
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int | None = None  # at most this many runs at once (default: --jobs when above 1, else Slurm's)
    max_num_timeout: int = 3  # requeues after time-outs before the run is given up (preemptions do not count)
    signal_delay_s: int = 120  # Slurm warns the job this long before its time limit, to checkpoint and requeue
    poll_s: float = 15.0  # how often `benchmark` asks Slurm while it waits
    job_name: str = "autoseg"

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> SlurmResources:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(options.extra) - set(known))
        if unknown:
            raise ValueError(f"unknown slurm executor option(s) {', '.join(unknown)}; known: {', '.join(known)}")
        values: dict[str, Any] = {}
        for key, value in options.extra.items():
            kind = known[key].type
            try:
                if "int" in kind:
                    values[key] = None if value in (None, "") else int(value)
                elif "float" in kind:
                    values[key] = None if value in (None, "") else float(value)
                else:
                    values[key] = None if value in (None, "") else str(value)
            except (TypeError, ValueError):
                raise ValueError(f"slurm executor option {key} must be a number, got {value!r}") from None
        res = cls(**values)
        if res.gpus_per_node is None:
            res.gpus_per_node = 1 if options.device == "cuda" else 0
        if res.array_parallelism is None and options.jobs > 1:
            res.array_parallelism = options.jobs
        for key in ("cpus_per_task", "timeout_min"):
            if getattr(res, key) < 1:
                raise ValueError(f"slurm executor option {key} must be at least 1, got {getattr(res, key)}")
        if res.mem_gb is not None and res.mem_gb <= 0:
            raise ValueError(f"slurm executor option mem_gb must be positive, got {res.mem_gb}")
        return res

    def submitit_parameters(self) -> dict[str, Any]:
        """Parameters of ``submitit.SlurmExecutor.update_parameters``."""
        threads = str(self.cpus_per_task)
        p: dict[str, Any] = {
            "job_name": self.job_name, "cpus_per_task": self.cpus_per_task, "time": self.timeout_min,
            "ntasks_per_node": 1, "nodes": 1, "signal_delay_s": self.signal_delay_s,
            # the run's thread pools sized to its CPUs: more threads than CPUs slows a CPU run several-fold
            "setup": [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} nnUNet_def_n_proc={threads}"],
            # a requeued job writes to the same log files: keep every attempt's lines (srun truncates by default)
            "srun_args": ["--open-mode=append"],
        }
        if self.partition:
            p["partition"] = self.partition
        if self.mem_gb is not None:
            p["mem"] = f"{int(round(self.mem_gb * 1024))}M"
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.array_parallelism:
            p["array_parallelism"] = self.array_parallelism
        for key in ("account", "qos", "constraint"):
            if getattr(self, key):
                p[key] = getattr(self, key)
        return p


class SlurmRun:
    """What a Slurm job runs: one run's worker. submitit calls :meth:`checkpoint` on Slurm's warning
    signal (preemption, or the time limit coming) and requeues the job with what it returns."""

    def __call__(self, task_path: str) -> int:
        import submitit

        from autoseg.grid.worker import execute_path

        # the submitting command wrote this job's id into the run's record before releasing the job
        _note_attempt(RunTask.read(task_path), submitit.JobEnvironment().job_id)
        return execute_path(task_path)

    def checkpoint(self, task_path: str) -> Any:
        import submitit

        # nothing to save here: nnU-Net's checkpoint_latest.pth is the run's state, and the worker of the
        # requeued job resumes from it (and puts the record back to running).
        return submitit.helpers.DelayedSubmission(self, task_path)


def set_job_id(store: Store, run_id: str, job_id: str) -> bool:
    """Write ``job_id`` (and ``executor="slurm"``) into the run's record, under the run's lock; False when
    another process holds the run (then its record is left as it is)."""
    lock = store.try_claim(run_id)
    if lock is None:
        return False
    try:
        record = store.read(run_id)
        if record is None or (record.job_id == job_id and record.executor == "slurm"):
            return record is not None
        record.job_id, record.executor = job_id, "slurm"
        store.write(record)
        return True
    finally:
        lock.release()


def _note_attempt(task: RunTask, job_id: str) -> None:
    """In the job: add this attempt (job id, node, log files) to the run's job file."""
    import submitit

    env = submitit.JobEnvironment()
    attempt = {"job_id": job_id, "host": env.hostname, "started": now_stamp(),
               "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
               "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr)}
    # under the file's lock: the submitting command may be writing the job id into it at this moment
    update_json(job_file(task.store, task.run_id), lambda info: _append(info, "attempts", attempt), default={})


def _append(info: dict[str, Any], key: str, item: Any) -> dict[str, Any]:
    return {**info, key: [*info.get(key, []), item]}


def job_file(store: str | os.PathLike, run_id: str) -> Path:
    """Where a run's Slurm job ids are kept: beside its record in the store."""
    return Path(store) / run_id / JOB_FILE


def job_id_of(store: str | os.PathLike, run_id: str) -> str | None:
    """The id (``<array id>_<task index>``) of the last Slurm job of ``run_id``, from its record, or None."""
    try:
        record = Store(store).read(run_id)
    except ValueError:
        return None
    return record.job_id if record is not None and record.executor == "slurm" else None


def _run_slurm(cmd: list[str], timeout: float = 60) -> str:
    if shutil.which(cmd[0]) is None:
        raise SlurmError(f"{cmd[0]} not found: the slurm executor needs Slurm's commands (sbatch, squeue, sacct) "
                         "on this machine")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SlurmError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def _expand_ids(job_id: str) -> list[str]:
    """``12_[0-2,5%2]`` (a pending array as sacct prints it) as ``12_0 12_1 12_2 12_5``; other ids as they are."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if m is None:
        return [job_id]
    out = []
    for part in m[2].split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m[1]}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def query_states(job_ids: Iterable[str]) -> dict[str, str]:
    """Slurm's state of each job (``RUNNING``, ``PENDING``, ``COMPLETED``, ``CANCELLED`` ...).

    Jobs in the queue are read from ``squeue`` (which lists every array task); jobs that left it
    from ``sacct`` (the accounting database; the last attempt of a requeued job). A job neither
    knows is left out."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted:
        return {}
    states: dict[str, str] = {}
    # the user's whole queue: squeue fails outright when asked by id for a job it has already forgotten
    out = _run_slurm(["squeue", "--array", "--noheader", "--format=%i|%T", f"--user={_user()}"])
    for line in out.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid in wanted:
            states[jid] = state.strip().upper()
    rest = wanted - set(states)
    if rest:
        try:
            out = _run_slurm(["sacct", "--allocations", "--noheader", "--parsable2", "--format=JobID,State",
                              "--jobs=" + ",".join(sorted(rest))], timeout=60)
        except SlurmError:
            out = ""  # no accounting on this cluster: only what squeue knows
        for line in out.splitlines():
            jid, _, state = line.strip().partition("|")
            for one in _expand_ids(jid):
                if one in rest:
                    # "CANCELLED by 0" -> CANCELLED; later lines (the last attempt) win
                    states[one] = state.split()[0].upper() if state.strip() else "UNKNOWN"
    return states


def _user() -> str:
    import getpass

    return getpass.getuser()


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Runs as tasks of a Slurm job array (submitit), each with :class:`SlurmResources`; waits by asking Slurm."""

    def __init__(self, options: ExecutorOptions):
        super().__init__(options)
        try:
            import submitit
        except ImportError:
            raise ValueError("the slurm executor needs the submitit package (pip install submitit)") from None
        self._submitit = submitit
        self.resources = SlurmResources.from_options(options)
        if shutil.which("sbatch") is None:
            raise ValueError("the slurm executor needs Slurm's sbatch on this machine (none on PATH); "
                             "for a single-node Slurm here see scripts/slurm-local.sh")
        self.tasks: list[RunTask] = []
        self.job_ids: dict[str, str] = {}  # run_id -> job id this invocation waits for
        self.stores: dict[str, str] = {}  # run_id -> its store

    def submit(self, tasks: Sequence[RunTask]) -> None:
        fresh: list[RunTask] = []
        known = {t.run_id: job_id_of(t.store, t.run_id) for t in tasks}
        states = query_states(j for j in known.values() if j)
        for task in tasks:
            self.stores[task.run_id] = task.store
            jid = known[task.run_id]
            if jid and states.get(jid) in ALIVE:
                # a job of an earlier invocation still queued or running: wait for it instead of a second one
                self.options.log(f"  {task.run_id}: Slurm job {jid} is {states[jid]}; waiting for it")
                self.job_ids[task.run_id] = jid
                if states[jid] == "PENDING":
                    # held by an invocation that stopped between sbatch and its release
                    subprocess.run(["scontrol", "release", jid], capture_output=True)
                continue
            task.threads = self.resources.cpus_per_task
            task.visible_devices = None  # Slurm sets CUDA_VISIBLE_DEVICES to the GPUs it gives the job
            task.write()
            fresh.append(task)
        self.tasks.extend(fresh)
        if not fresh:
            return
        folder = Path(fresh[0].results) / "submitit" / "%j"
        ex = self._submitit.SlurmExecutor(folder=str(folder), max_num_timeout=self.resources.max_num_timeout)
        # submitted held, and released once every record names its job: no worker can start (and claim its
        # run) while this process writes the job ids, and a queued run's status comes from Slurm
        ex.update_parameters(**self.resources.submitit_parameters(), additional_parameters={"hold": True})
        jobs = ex.map_array(SlurmRun(), [str(t.path) for t in fresh])
        for task, job in zip(fresh, jobs):
            self.job_ids[task.run_id] = job.job_id
            set_job_id(Store(task.store), task.run_id, job.job_id)
            update = {"job_id": job.job_id, "submitted": now_stamp(),
                      "logs": str(job.paths.folder), "resources": self.resources.submitit_parameters()}
            update_json(job_file(task.store, task.run_id),
                        lambda info, u=update, j=job.job_id: _append({**info, **u}, "submissions", j), default={})
        array = jobs[0].job_id.split("_")[0]
        _run_slurm(["scontrol", "release", array])
        self.options.log(f"submitted {len(fresh)} run(s) as Slurm job array {array} "
                         f"({self.resources.cpus_per_task} CPU(s)"
                         + (f", {self.resources.mem_gb:g} GB" if self.resources.mem_gb else "")
                         + (f", {self.resources.gpus_per_node} GPU(s)" if self.resources.gpus_per_node else "")
                         + f", {self.resources.timeout_min} min each; logs in {Path(fresh[0].results) / 'submitit'})")

    def wait(self) -> None:
        """Until Slurm reports every job ended (a requeued job counts as alive); logs each change of state."""
        last: dict[str, str] = {}
        unknown_since: dict[str, float] = {}
        while True:
            try:
                states = query_states(self.job_ids.values())
            except (SlurmError, subprocess.TimeoutExpired) as e:
                # a busy or restarting slurmctld: the jobs go on; ask again
                self.options.log(f"  Slurm did not answer ({e}); asking again in {self.resources.poll_s:g} s")
                time.sleep(self.resources.poll_s)
                continue
            alive = 0
            for run_id, jid in self.job_ids.items():
                state = states.get(jid)
                if state is None:
                    # just submitted jobs can take a moment to reach the accounting database
                    unknown_since.setdefault(jid, time.time())
                    if time.time() - unknown_since[jid] < 120:
                        alive += 1
                    continue
                unknown_since.pop(jid, None)
                if state != last.get(run_id):
                    self.options.log(f"  {run_id}: Slurm job {jid} {state}")
                    last[run_id] = state
                if state in ALIVE:
                    alive += 1
            if not alive:
                break
            time.sleep(self.resources.poll_s)
        for run_id in self.job_ids:
            update_json(job_file(self.stores[run_id], run_id),
                        lambda info, r=run_id: {**info, "final_state": last.get(r, "UNKNOWN")}, default={})

    def status(self, task: RunTask) -> str | None:
        jid = self.job_ids.get(task.run_id) or job_id_of(task.store, task.run_id)
        if not jid:
            return None
        state = query_states([jid]).get(jid)
        return None if state is None or state not in ALIVE else VIEW.get(state, "pending")

    @classmethod
    def record_status(cls, record: Any) -> str | None:
        """Slurm's view of a run from its record's ``job_id``: ``pending`` (queued, requeued) or ``running``
        while Slurm holds the job; ``interrupted`` for a record left ``running`` by a job Slurm has ended
        (cancelled, timed out, node lost); otherwise None (the record decides)."""
        jid = getattr(record, "job_id", None)
        if not jid or shutil.which("squeue") is None:
            return None
        try:
            state = query_states([jid]).get(jid)
        except (SlurmError, OSError, subprocess.TimeoutExpired):
            return None
        if state in ALIVE:
            return VIEW.get(state, "pending")
        if state is not None and record.status == "running":
            return "interrupted"
        return None


__all__ = ["ALIVE", "JOB_FILE", "SlurmError", "SlurmExecutor", "SlurmResources", "SlurmRun", "job_file", "job_id_of",
           "query_states", "set_job_id"]
