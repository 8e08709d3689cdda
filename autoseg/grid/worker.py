"""Runs one run: claims it in the store, trains (or resumes, or only validates) with nnU-Net, scores it, records it.

``python -m autoseg.grid.worker TASK_JSON`` is what every executor starts; :func:`execute` is the
same in-process. The run's record goes ``running`` (with ``attempts`` + 1) when the worker starts
and ``done`` or ``failed`` (with the error) when it ends; an interrupted worker (Ctrl-C, SIGTERM
of a preempted job) puts it back to ``pending``, and one killed outright leaves ``running``
without anyone holding its lock, which the store reads as ``interrupted``. Either way the next
attempt resumes from nnU-Net's ``checkpoint_latest.pth``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from autoseg.grid.executors import RunTask
from autoseg.grid.store import Store
from autoseg.records import FoldRecord, now_stamp, stamp_seconds, write_record

#: exit status of a worker whose run failed (0: done, or nothing to do)
FAILED = 1


def save(record: FoldRecord, store: Store, fold_dir: Path) -> None:
    """The record into the store and, for readers of nnU-Net's results folder, into the fold folder."""
    store.write(record)
    if fold_dir.is_dir():
        write_record(fold_dir, record)


def execute(task: RunTask, log: Callable[[str], None] = print) -> int:
    """Run ``task`` (claim, train or resume, validate, score, record). Returns 0 (done or nothing to do) or 1 (failed)."""
    store = Store(task.store)
    lock = store.try_claim(task.run_id)
    if lock is None:
        log(f"  {task.run_id} is being run by another process; left to it")
        return 0
    try:
        record = store.read(task.run_id)
        if record is None:
            raise ValueError(f"no record of {task.run_id} in the store {store.root}: the runner writes it first")
        if record.done:
            # the runner submits a done run only for its missing (or, with --retry-failed, failed) test scores
            if task.test_set and needs_test(record, retry_failed=True) and \
                    (task.fold_dir / "checkpoint_final.pth").is_file():
                log(f"  {task.run_id} is done; predicting and scoring its test set only")
                _configure(task)
                score_test_set(record, task, task.fold_dir, log)
                save(record, store, task.fold_dir)
                return 0
            log(f"  {task.run_id} is done (record in the store); not run again")
            return 0
        return _run(task, record, store, log)
    finally:
        lock.release()


def _configure(task: RunTask) -> None:
    from autoseg.paths import WorkDirs, configure_nnunet

    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    configure_nnunet(WorkDirs(Path(task.raw), Path(task.preprocessed), Path(task.results)))


def _run(task: RunTask, record: FoldRecord, store: Store, log: Callable[[str], None]) -> int:
    from autoseg.precision import training_precision

    t0 = time.time()
    fold_dir = task.fold_dir
    fold_dir.mkdir(parents=True, exist_ok=True)
    carried = carried_seconds(record, fold_dir)
    record.status, record.error, record.attempts = "running", None, record.attempts + 1
    record.started, record.finished, record.host = now_stamp(), None, socket.gethostname()
    record.resumed_seconds = carried
    record.device, record.executor = task.device, task.executor
    record.precision = training_precision(task.device, record.architecture)
    save(record, store, fold_dir)
    try:
        _configure(task)
        epochs = train_and_validate(record, task, fold_dir, log)
        finish_record(record, fold_dir, Path(task.preprocessed), Path(task.raw))
        record.epochs_completed = epochs
    except (KeyboardInterrupt, SystemExit):
        record.status, record.error = "pending", "interrupted; a rerun resumes it"
        record.wall_seconds = round(carried + time.time() - t0, 1)
        save(record, store, fold_dir)
        raise
    except BaseException as e:  # noqa: BLE001 (a failed run is recorded, and the others go on)
        record.status, record.error = "failed", f"{type(e).__name__}: {e}"
        record.finished, record.wall_seconds = now_stamp(), round(carried + time.time() - t0, 1)
        save(record, store, fold_dir)
        log(f"  {task.run_id} failed: {record.error}")
        (fold_dir / "autoseg_error.txt").write_text(traceback.format_exc())
        return FAILED
    record.status, record.finished, record.wall_seconds = "done", now_stamp(), round(carried + time.time() - t0, 1)
    keep_dataset_json(fold_dir, store.path(record.run_id).parent)
    save(record, store, fold_dir)
    if task.test_set:
        # after the run is recorded done: a worker stopped while predicting leaves a done run without test scores,
        # which the next invocation completes without training (runner.run_records); wall_seconds stays the
        # training and validation time, the test step's own time is in the test block
        score_test_set(record, task, fold_dir, log)
        save(record, store, fold_dir)
    return 0


def keep_dataset_json(fold_dir: Path, store_fold_dir: Path) -> None:
    """Copy nnU-Net's ``dataset.json`` of the run (labels, file ending) beside the run in the store, as nnU-Net
    keeps it in its results folder: a store read on another machine needs no raw or preprocessed data."""
    from autoseg.io import atomic_write_text

    src, dst = fold_dir.parent / "dataset.json", store_fold_dir.parent / "dataset.json"
    if src.is_file() and not dst.is_file():
        atomic_write_text(dst, src.read_text())


def carried_seconds(record: FoldRecord, fold_dir: Path) -> float:
    """Seconds of earlier attempts that this attempt builds on: 0 when it trains from the start.

    An attempt that resumes from nnU-Net's ``checkpoint_latest.pth`` (or only validates a finished training,
    ``checkpoint_final.pth``) carries the time the earlier attempts spent up to that checkpoint: the previous
    attempt's, from its start to the checkpoint's modification time (work after the checkpoint is lost and
    not counted), plus what that attempt itself carried. So ``wall_seconds`` is what the whole run cost, even
    when an attempt was killed outright and recorded no time of its own.
    """
    ckpt = next((fold_dir / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth")
                 if (fold_dir / n).is_file()), None)
    if ckpt is None or not record.started:
        return 0.0
    previous_start = stamp_seconds(record.started)
    previous = 0.0 if previous_start is None else max(0.0, ckpt.stat().st_mtime - previous_start)
    return float(record.resumed_seconds or 0.0) + previous


def train_and_validate(record: FoldRecord, task: RunTask, fold_dir: Path, log: Callable[[str], None]) -> int:
    """Train (or resume, or only validate) the run into ``fold_dir``, nnU-Net's fold folder; the epochs trained."""
    import torch

    from autoseg.io import read_json
    from autoseg.prepare import temporary_env
    from autoseg.trainers.factory import make_trainer_class

    trainer_cls = make_trainer_class(record.loss, record.loss_args, record.seed)
    if trainer_cls.__name__ != record.trainer:
        raise ValueError(f"the record names trainer {record.trainer} but (loss, hyper-parameters, seed) give "
                         f"{trainer_cls.__name__}")
    # autoseg prints one line per epoch; nnU-Net's own lines still go to the fold's log file
    quiet_cls = type(trainer_cls.__name__, (trainer_cls,), {"console_log": False, "__module__": trainer_cls.__module__})
    plans = read_json(Path(task.preprocessed) / record.dataset / f"{record.plans}.json")
    dataset_json = read_json(Path(task.raw) / record.dataset / "dataset.json")
    if plans is None or dataset_json is None:
        raise FileNotFoundError(f"{record.dataset} is not prepared in {task.preprocessed} (plans) or {task.raw}")
    device = torch.device(task.device)
    # On a CPU, augmenting in the training process beats worker processes that fight it for the cores
    # (measured 18-35 % faster on 2 cores); an explicit nnUNet_n_proc_DA wins.
    da_env = {"nnUNet_n_proc_DA": "0"} if device.type == "cpu" and "nnUNet_n_proc_DA" not in os.environ else {}
    final = fold_dir / "checkpoint_final.pth"

    def new_trainer():
        # nnU-Net's trainer takes "continue_training" out of the plans it is given: each gets its own copy
        return quiet_cls(plans={**plans, "continue_training": False}, configuration=record.configuration,
                         fold=int(record.fold), dataset_json=dataset_json, device=device)

    with temporary_env(**da_env):
        trainer = new_trainer()
        if final.is_file():
            log("  training finished earlier; running the validation only")
            trainer.load_checkpoint(str(final))
        else:
            latest = fold_dir / "checkpoint_latest.pth"
            if latest.is_file():
                try:
                    trainer.load_checkpoint(str(latest))
                    log(f"  resuming from {latest.name} at epoch {trainer.current_epoch}")
                except Exception as e:  # killed while nnU-Net wrote it: start the run again
                    latest.rename(latest.with_name(latest.name + ".unreadable"))
                    log(f"  {latest.name} cannot be read ({type(e).__name__}); training from the start")
                    trainer = new_trainer()
            n_it = trainer.num_epochs * trainer.num_iterations_per_epoch
            log(f"  {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} iterations ({n_it} in all), "
                f"batch {trainer.configuration_manager.batch_size}, patch {trainer.configuration_manager.patch_size}"
                + (f", seed {record.seed}" if record.seed else "") + f", {trainer.training_precision}")
            trainer.run_training()
        log("  validating (sliding window with mirroring, nnU-Net's evaluation)")
        trainer.perform_actual_validation(save_probabilities=False)
    return int(trainer.current_epoch)


def finish_record(record: FoldRecord, fold_dir: Path, preprocessed: Path | None, raw: Path | None) -> None:
    """Fill the record's results from the fold folder: nnU-Net's per-case Dice and autoseg's metric rows."""
    from autoseg.evaluation.store_rows import evaluation_block, read_nnunet_summary
    from autoseg.evaluation.training_log import parse_training_log

    record.per_case = read_nnunet_summary(fold_dir)
    record.checkpoint = "final"
    log = parse_training_log(list(fold_dir.glob("training_log_*.txt")))
    times = [t for t in log["epoch_time"] if t == t]
    record.seconds_per_epoch = sum(times) / len(times) if times else None
    record.curves = {k: [None if v != v else v for v in log[k]]
                     for k in ("epoch", "train_loss", "val_loss", "pseudo_dice", "epoch_time")} if log["epoch"] else None
    record.evaluation = evaluation_block(record, fold_dir, preprocessed, raw)


TEST_ERROR_NAME = "autoseg_test_error.txt"


def needs_test(record: FoldRecord, retry_failed: bool = False) -> bool:
    """Whether a run asked for test-set scores lacks them: no ``test`` field yet, or (``retry_failed``) a failed one."""
    from autoseg.evaluation.store_rows import test_failed

    if not record.test:
        return True
    return retry_failed and test_failed(record.test)


def score_test_set(record: FoldRecord, task: RunTask, fold_dir: Path, log: Callable[[str], None]) -> None:
    """Predict the held-out test set with this run's own model (its fold, its seed, ``checkpoint_final.pth``) into
    ``test_predictions/fold_<N>`` and keep the metric rows in ``record.test``.

    A test set that cannot be predicted or scored (a corrupt image, a missing label) costs the run its test scores
    only: the error goes to ``record.test["state"]`` (``failed: ...``, traceback in ``autoseg_test_error.txt``) and
    the run keeps its training and validation results and stays ``done``.
    """
    from autoseg.evaluation.store_rows import DEFAULT_DISTANCES, DEFAULT_TOLERANCE_MM, test_block
    from autoseg.heldout import HeldOutError, find_test_set, predict_test_set
    from autoseg.io import read_json

    raw_dir = Path(task.raw) / record.dataset
    t0 = time.time()
    try:
        dataset_json = read_json(raw_dir / "dataset.json") or {}
        test_set = find_test_set(raw_dir, dataset_json)
        if test_set is None:
            raise HeldOutError(f"{raw_dir} has no test images (imagesTs)")
        (pred,) = predict_test_set(fold_dir.parent, test_set, task.device, folds=[int(record.fold)], per_fold=True,
                                   ensemble=False, log=log)
        record.test = test_block(record, fold_dir, pred.folder, Path(task.preprocessed), Path(task.raw))
        record.test["seconds_per_case"] = (round(sum(pred.seconds_per_case.values()) / len(pred.seconds_per_case), 3)
                                           if pred.seconds_per_case else None)
        record.test["seconds"] = round(time.time() - t0, 1)
        log(f"  test set: {record.test['state']} ({len(test_set.cases)} case(s))")
    except Exception as e:  # noqa: BLE001 (the run's training and validation stand without the test set)
        error = f"{type(e).__name__}: {e}"
        record.test = {"metrics_version": None, "tolerance_mm": DEFAULT_TOLERANCE_MM, "distances": DEFAULT_DISTANCES,
                       "state": f"failed: {error}", "predictor": None, "checkpoint": "final", "rows": []}
        (fold_dir / TEST_ERROR_NAME).write_text(traceback.format_exc())
        log(f"  test set of {record.run_id} failed: {error}")


def execute_path(task_path: str) -> int:
    """:func:`execute` of the task written at ``task_path``; raises when the run failed (submitit reports it)."""
    code = execute(RunTask.read(task_path))
    if code:
        raise RuntimeError(f"run failed; see its record ({task_path})")
    return code


def _terminate(signum, frame):  # noqa: ARG001
    # a preempted or cancelled job: end like Ctrl-C, so the record goes back to pending
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m autoseg.grid.worker TASK_JSON", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    task = RunTask.read(argv[0])
    return execute(task, log=lambda m: print(m, flush=True))


if __name__ == "__main__":  # nnU-Net's validation uses a spawn pool: the guard is needed
    sys.exit(main())
