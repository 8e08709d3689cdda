"""Ways to run a grid's runs, as entries of one table: ``inline``, ``local`` (N at once), ``submitit_local``.

An executor gets :class:`RunTask` objects and runs ``python -m autoseg.grid.worker TASK`` (or
:func:`autoseg.grid.worker.execute` in a process of its choice) for each. It decides nothing
about a run: the worker claims the run in the store, skips it when done, resumes it from nnU-Net's
checkpoints, and records the outcome. So a new executor (the ``slurm`` one, for instance) is one
class registered with :func:`register_executor`:

    @register_executor("name")
    class MyExecutor(Executor):
        def submit(self, tasks): ...      # start (or queue) the tasks
        def wait(self): ...               # return when every submitted task has ended
        def status(self, task): ...       # optional: the engine's view ("pending", "running", ...)
        @classmethod
        def record_status(cls, record): ...  # optional: the same from a run's record (its job_id)

A module ``autoseg/grid/executor_<name>.py`` is imported when the table is first read, so an
executor in its own file needs no other edit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from autoseg.io import atomic_write_json, read_json

TASK_NAME = "autoseg_task.json"
WORKER_LOG = "autoseg_worker.log"


@dataclass
class RunTask:
    """What a worker needs to run one run: its identity in the store and this machine's folders."""

    run_id: str
    store: str
    raw: str
    preprocessed: str
    results: str
    device: str = "cpu"
    threads: int | None = None  # torch threads of the run (None: torch's default)
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES of the run
    executor: str = ""  # the executor's name, recorded with the run
    test_set: bool = False  # also predict and score the held-out test set with the run's model (--test-set)

    @property
    def fold_dir(self) -> Path:
        return Path(self.results) / self.run_id

    @property
    def path(self) -> Path:
        """Where the task is written for a worker process: in nnU-Net's fold folder (machine paths stay
        out of the store)."""
        return self.fold_dir / TASK_NAME

    @property
    def log_path(self) -> Path:
        return self.fold_dir / WORKER_LOG

    def write(self) -> Path:
        atomic_write_json(self.path, asdict(self))
        return self.path

    @classmethod
    def read(cls, path: str | os.PathLike) -> RunTask:
        data = read_json(path)
        if not isinstance(data, dict) or "run_id" not in data:
            raise ValueError(f"{path} is not a run task")
        return cls(**data)

    def worker_command(self) -> list[str]:
        return [sys.executable, "-m", "autoseg.grid.worker", str(self.path)]


@dataclass
class ExecutorOptions:
    """Settings every executor understands, plus ``extra`` ones of one executor (``--executor-option k=v``)."""

    jobs: int = 1  # runs at once
    device: str = "cpu"
    log: Callable[[str], None] = print
    extra: dict[str, Any] = field(default_factory=dict)


class Executor:
    """Base of the executors: runs tasks; knows nothing of what a run does."""

    name: ClassVar[str] = ""

    def __init__(self, options: ExecutorOptions):
        self.options = options

    def submit(self, tasks: Sequence[RunTask]) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError

    def status(self, task: RunTask) -> str | None:
        """The engine's view of ``task`` (``pending``, ``running``, ``done``, ``failed``), or ``None``: ask the store."""
        return None

    @classmethod
    def record_status(cls, record: Any) -> str | None:
        """The engine's view of a run from its record alone (``autoseg benchmark status`` in a later process):
        e.g. the Slurm state of ``record.job_id``. ``None``: the store's view stands."""
        return None


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str) -> Callable[[type[Executor]], type[Executor]]:
    """Class decorator: make an executor available as ``--executor NAME``."""

    def decorator(cls: type[Executor]) -> type[Executor]:
        if name in EXECUTORS and EXECUTORS[name] is not cls:
            raise ValueError(f"an executor named {name!r} is already registered ({EXECUTORS[name].__name__})")
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return decorator


def _load_plugins() -> None:
    # executors defined in their own module of this package register themselves on import
    import importlib
    import pkgutil

    import autoseg.grid as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name.startswith("executor_"):
            importlib.import_module(f"autoseg.grid.{mod.name}")


def get_executor(name: str, options: ExecutorOptions) -> Executor:
    """The executor registered as ``name``, made with ``options``."""
    _load_plugins()
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; available: {', '.join(sorted(EXECUTORS))}")
    return EXECUTORS[name](options)


def list_executors() -> list[str]:
    _load_plugins()
    return sorted(EXECUTORS)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def gpu_ids() -> list[str]:
    """The GPUs this process may use (``CUDA_VISIBLE_DEVICES`` if set, else every GPU torch sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # no usable torch CUDA: a CPU machine
        return []


def share(task: RunTask, slot: int, jobs: int, device: str) -> RunTask:
    """``task`` with its share of this machine: cores // jobs torch threads, and on GPUs one GPU per slot."""
    task.threads = max(1, available_cores() // max(1, jobs))
    if device == "cuda":
        gpus = gpu_ids()
        if gpus:
            task.visible_devices = gpus[slot % len(gpus)]
    return task


def worker_env(task: RunTask) -> dict[str, str]:
    """The environment of a worker process: its thread count and device, nothing else changed."""
    env = dict(os.environ)
    if task.threads:
        # torch, OpenMP and MKL each start a pool of this size; more than the share oversubscribes the cores
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "nnUNet_def_n_proc"):
            env[var] = str(task.threads)
    if task.visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = task.visible_devices
    return env


@register_executor("inline")
class InlineExecutor(Executor):
    """One run after another in this process (``plan_and_train``'s default: its output stays on the console)."""

    def __init__(self, options: ExecutorOptions):
        super().__init__(options)
        self.queue: list[RunTask] = []
        self.results: dict[str, int] = {}

    def submit(self, tasks: Sequence[RunTask]) -> None:
        self.queue.extend(tasks)

    def wait(self) -> None:
        from autoseg.grid.worker import execute

        while self.queue:
            task = self.queue.pop(0)
            self.results[task.run_id] = execute(task, log=self.options.log)


@register_executor("local")
class LocalExecutor(Executor):
    """``jobs`` runs at once on this machine, each in its own process (a crash stops only its run),
    each with an even share of the cores and, on GPUs, a GPU of its own."""

    poll_seconds = 0.5

    def __init__(self, options: ExecutorOptions):
        super().__init__(options)
        if options.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {options.jobs}")
        self.queue: list[RunTask] = []
        self.running: dict[int, tuple[RunTask, subprocess.Popen, Any]] = {}
        self.results: dict[str, int] = {}

    def submit(self, tasks: Sequence[RunTask]) -> None:
        self.queue.extend(tasks)

    def _start(self, slot: int) -> None:
        task = share(self.queue.pop(0), slot, self.options.jobs, self.options.device)
        task.write()
        log = open(task.log_path, "a")  # noqa: SIM115 (closed when the process ends)
        proc = subprocess.Popen(task.worker_command(), stdout=log, stderr=subprocess.STDOUT, env=worker_env(task))
        self.running[slot] = (task, proc, log)
        self.options.log(f"started {task.run_id} (slot {slot}, {task.threads} thread(s)"
                         + (f", GPU {task.visible_devices}" if task.visible_devices is not None else "")
                         + f"; log {task.log_path})")

    def wait(self) -> None:
        try:
            while self.queue or self.running:
                for slot in range(self.options.jobs):
                    if slot not in self.running and self.queue:
                        self._start(slot)
                time.sleep(self.poll_seconds)
                for slot, (task, proc, log) in list(self.running.items()):
                    code = proc.poll()
                    if code is not None:
                        log.close()
                        del self.running[slot]
                        self.results[task.run_id] = code
                        self.options.log(f"ended {task.run_id}: exit status {code}")
        finally:  # interrupted: stop the workers; their records stay resumable
            for _, proc, _ in self.running.values():
                proc.terminate()
            for _, proc, log in self.running.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()

    def status(self, task: RunTask) -> str | None:
        if any(t.run_id == task.run_id for t, _, _ in self.running.values()):
            return "running"
        if any(t.run_id == task.run_id for t in self.queue):
            return "pending"
        return None


@register_executor("submitit_local")
class SubmititLocalExecutor(Executor):
    """submitit's ``LocalExecutor``: the path the ``slurm`` executor takes, testable without Slurm.

    submitit starts every job it is given at once, so tasks go in waves of ``jobs``."""

    def __init__(self, options: ExecutorOptions):
        super().__init__(options)
        try:
            import submitit
        except ImportError:
            raise ValueError("the submitit_local executor needs the submitit package (pip install submitit)") from None
        self._submitit = submitit
        self.queue: list[RunTask] = []
        self.jobs: dict[str, Any] = {}

    def submit(self, tasks: Sequence[RunTask]) -> None:
        self.queue.extend(tasks)

    def wait(self) -> None:
        from autoseg.grid.worker import execute_path

        while self.queue:
            wave, self.queue = self.queue[: self.options.jobs], self.queue[self.options.jobs:]
            ex = self._submitit.LocalExecutor(folder=str(Path(wave[0].results) / "submitit_logs" / "%j"))
            ex.update_parameters(timeout_min=int(self.options.extra.get("timeout_min", 24 * 60)))
            for slot, task in enumerate(wave):
                share(task, slot, self.options.jobs, self.options.device).write()
            with ex.batch():
                jobs = [ex.submit(execute_path, str(t.path)) for t in wave]
            for task, job in zip(wave, jobs):
                self.jobs[task.run_id] = job
                try:
                    job.result()
                except Exception as e:  # the worker recorded the failure in the store; say it and go on
                    lines = str(e).strip().splitlines()
                    self.options.log(f"{task.run_id}: {lines[-1] if lines else type(e).__name__}")

    def status(self, task: RunTask) -> str | None:
        job = self.jobs.get(task.run_id)
        if job is None:
            return "pending" if any(t.run_id == task.run_id for t in self.queue) else None
        return {"PENDING": "pending", "RUNNING": "running", "COMPLETED": "done", "FINISHED": "done",
                "FAILED": "failed"}.get(job.state.upper())


__all__ = ["EXECUTORS", "Executor", "ExecutorOptions", "RunTask", "available_cores", "get_executor", "gpu_ids",
           "list_executors", "register_executor", "share", "worker_env"]

