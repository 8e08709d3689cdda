"""The grid without nnU-Net: loss sweeps, expansion and identities, trainer names, records, the store, locks."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from autoseg.grid.spec import GridError, Target, expand, expand_losses, parse_loss_item, parse_seeds
from autoseg.grid.store import Store
from autoseg.io import atomic_write_json, file_lock, read_json, try_lock, update_json
from autoseg.records import read_record, write_record
from autoseg.trainers.names import parse_trainer_name, trainer_class_name


def test_loss_items_lists_categories_and_sweeps():
    from autoseg.losses import list_losses

    assert parse_loss_item("dice,combo") == [("dice", {}), ("combo", {})]
    assert parse_loss_item("tversky:alpha=0.3,0.5,0.7") == [("tversky", {"alpha": 0.3}), ("tversky", {"alpha": 0.5}),
                                                            ("tversky", {"alpha": 0.7})]
    assert parse_loss_item("tversky:alpha=0.3,0.7:beta=0.5") == [("tversky", {"alpha": 0.3, "beta": 0.5}),
                                                                 ("tversky", {"alpha": 0.7, "beta": 0.5})]
    assert [n for n, _ in parse_loss_item("all")] == list_losses()
    assert [n for n, _ in parse_loss_item("region")] == list_losses(category="region")
    # "boundary" is both Kervadec's loss and a category: the loss's name wins; category= selects a category
    assert parse_loss_item("boundary") == [("boundary", {})]
    assert parse_loss_item("dice,boundary") == [("dice", {}), ("boundary", {})]
    assert [n for n, _ in parse_loss_item("category=boundary")] == list_losses(category="boundary")
    assert len(list_losses(category="boundary")) > 1
    assert [n for n, _ in parse_loss_item("category=region")] == list_losses(category="region")
    with pytest.raises(GridError, match="unknown loss category 'shape'.*pixel, region, boundary, combination"):
        parse_loss_item("category=shape")
    for bad, msg in [("tversky:alpha", "loss:key=v1,v2"), ("tversky:alpha=", "no values"),
                     ("tversky:alpha=1:alpha=2", "swept twice"), ("", "empty")]:
        with pytest.raises(GridError, match=msg):
            parse_loss_item(bad)


def test_expand_losses_validates_and_deduplicates():
    settings = expand_losses(["dice", "dice,combo", "combo:alpha=0.3,0.3"])
    assert settings == [("dice", {}), ("combo", {}), ("combo", {"alpha": 0.3})]
    with pytest.raises(ValueError, match="Did you mean"):
        expand_losses(["dcie"])
    with pytest.raises(ValueError, match="alpha"):
        expand_losses(["combo:alpha=2"])  # the loss's own check, before any preparation


def test_seeds():
    assert parse_seeds("0") == [0]
    assert parse_seeds("0-2,7") == [0, 1, 2, 7]
    for bad in ("x", "3-1", "-1"):
        with pytest.raises(GridError):
            parse_seeds(bad)


def test_trainer_names_round_trip():
    assert trainer_class_name("combo") == "nnUNetTrainer_autoseg_combo"
    assert trainer_class_name("combo", seed=3) == "nnUNetTrainer_autoseg_combo_seed3"
    hashed = trainer_class_name("combo", {"alpha": 0.3}, seed=2)
    parsed = parse_trainer_name(hashed)
    assert parsed.stem == "combo" and len(parsed.hash) == 8 and parsed.seed == 2
    assert parsed.base == trainer_class_name("combo", {"alpha": 0.3})
    p = parse_trainer_name("nnUNetTrainer_autoseg_dice_plus_0p5xtopk")
    assert (p.stem, p.hash, p.seed) == ("dice_plus_0p5xtopk", "", 0)
    assert parse_trainer_name("nnUNetTrainer") is None
    with pytest.raises(ValueError, match="seed"):
        trainer_class_name("combo", seed=-1)


def _targets():
    return [Target("Dataset991_X", "3d_fullres", "3d_fullres_smoke", "cnn", 5, {"name": "smoke", "epochs": 2}),
            Target("Dataset991_X", "2d", "2d_smoke", "cnn", 5, {"name": "smoke", "epochs": 2})]


def test_expansion_size_order_and_identity():
    losses = [("dice", {}), ("tversky", {"alpha": 0.3}), ("tversky", {"alpha": 0.7})]
    runs = expand(_targets(), losses, "0-1", [0, 1])
    assert len(runs) == 2 * 3 * 2 * 2
    ids = [r.run_id for r in runs]
    assert len(set(ids)) == len(ids)  # one identity per run
    assert ids == [r.run_id for r in expand(_targets(), losses, "0-1", [0, 1])]  # deterministic
    first = runs[0]
    assert first.run_id == "Dataset991_X/nnUNetTrainer_autoseg_dice__nnUNetPlans__3d_fullres_smoke/fold_0"
    seeded = next(r for r in runs if r.seed == 1 and r.loss == "dice")
    assert seeded.run_id == "Dataset991_X/nnUNetTrainer_autoseg_dice_seed1__nnUNetPlans__3d_fullres_smoke/fold_0"
    # every part that determines the result is in the directory name
    a, b = (r for r in runs if r.loss == "tversky" and r.fold == 0 and r.seed == 0 and r.configuration == "2d_smoke")
    assert a.loss_args != b.loss_args and a.run_id != b.run_id
    assert all(r.status == "pending" for r in runs)
    assert expand(_targets()[:1], losses[:1], "all", [0])[-1].fold == 4


def test_record_round_trip_and_old_format(tmp_path):
    rec = expand(_targets()[:1], [("dice", {})], "0", [0])[0]
    rec.status, rec.per_case = "done", [{"case": "a.nii.gz", "dice": {"1": 0.5}}]
    path = write_record(tmp_path / "fold_0", rec)
    assert path.name == "autoseg.json"
    back = read_record(tmp_path / "fold_0")
    assert back == rec and back.done
    old = {"loss": "combo", "loss_args": {}, "trainer": "nnUNetTrainer_autoseg_combo", "plans": "nnUNetPlans",
           "configuration": "3d_fullres_smoke", "budget": {"name": "smoke", "epochs": 2}, "dataset": "Dataset991_X",
           "fold": 0, "device": "cpu", "natural_image": False, "status": "done", "seconds": 12.5}
    (tmp_path / "old.json").write_text(json.dumps(old))
    o = read_record(tmp_path / "old.json")
    assert o.done and o.wall_seconds == 12.5 and o.version == 1 and o.run_id.endswith("fold_0")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "nostatus.json").write_text(json.dumps({**old, "status": "weird"}))
    assert read_record(tmp_path / "nostatus.json").status == "running"  # old file, unknown state: resumable
    assert read_record(tmp_path / "absent.json") is None


def test_store_states_and_claims(tmp_path):
    store = Store(tmp_path / "store")
    rec = expand(_targets()[:1], [("dice", {})], "0", [0])[0]
    assert store.view(rec.run_id) == "missing"
    store.write(rec)
    assert store.view(rec.run_id) == "pending"
    rec.status = "running"
    store.write(rec)
    assert store.view(rec.run_id) == "interrupted"  # nobody holds it
    lock = store.try_claim(rec.run_id)
    assert lock is not None
    try:
        # another process sees it running
        code = subprocess.run([sys.executable, "-c", "import sys; from autoseg.grid.store import Store; "
                               f"print(Store({str(store.root)!r}).view({rec.run_id!r}))"],
                              capture_output=True, text=True, env={**os.environ})
        assert code.stdout.strip() == "running", code.stderr
    finally:
        lock.release()
    assert [r.run_id for _, r in store.records()] == [rec.run_id]


def _add_key(args):
    path, i = args
    update_json(path, lambda d: {**d, str(i): i}, default={})


def test_update_json_under_lock_loses_nothing(tmp_path):
    path = tmp_path / "shared.json"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_add_key, [(str(path), i) for i in range(40)])
    assert read_json(path) == {str(i): i for i in range(40)}
    path.write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        update_json(path, lambda d: d, default={})


def test_lock_is_freed_when_its_process_is_killed(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_json(target, {"a": 1})
    child = subprocess.Popen([sys.executable, "-c", "import time; from autoseg.io import try_lock; "
                              f"l = try_lock({str(target)!r}); print(l is not None, flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "True"
    assert try_lock(target) is None
    child.kill()
    child.wait()
    deadline = time.time() + 10
    lock = None
    while lock is None and time.time() < deadline:
        lock = try_lock(target)
        time.sleep(0.1)
    assert lock is not None
    lock.release()
    with file_lock(target, timeout=1):
        assert read_json(target) == {"a": 1}


def test_executor_table_and_share_of_the_machine(monkeypatch, tmp_path):
    from autoseg.grid import executors as ex

    assert {"inline", "local", "submitit_local"} <= set(ex.list_executors())
    with pytest.raises(ValueError, match="unknown executor 'nope'"):
        ex.get_executor("nope", ex.ExecutorOptions())

    @ex.register_executor("test_recorder")
    class Recorder(ex.Executor):
        def submit(self, tasks):
            self.got = list(tasks)

        def wait(self):
            pass

    try:
        made = ex.get_executor("test_recorder", ex.ExecutorOptions(jobs=3))
        assert isinstance(made, Recorder) and made.options.jobs == 3
    finally:
        del ex.EXECUTORS["test_recorder"]
    monkeypatch.setattr(ex, "available_cores", lambda: 16)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")

    def task():
        return ex.RunTask("D/t__p__c/fold_0", str(tmp_path / "s"), "r", "p", str(tmp_path / "res"), device="cuda")

    t = ex.share(task(), slot=3, jobs=4, device="cuda")
    assert t.threads == 4 and t.visible_devices == "5"  # slot 3 of two GPUs: the second
    env = ex.worker_env(t)
    assert env["OMP_NUM_THREADS"] == "4" and env["CUDA_VISIBLE_DEVICES"] == "5"
    assert ex.share(task(), 0, 32, "cpu").threads == 1 and ex.share(task(), 0, 32, "cpu").visible_devices is None
    written = t.write()
    assert ex.RunTask.read(written) == t


def test_local_executor_a_crash_stops_only_its_run(tmp_path):
    """Workers that die (here: no record in the store) end with an error; the others still run, at most
    ``jobs`` at once."""
    from autoseg.grid import executors as ex

    tasks = [ex.RunTask(f"D/t__p__c/fold_{i}", str(tmp_path / "store"), "r", "p", str(tmp_path / "res"))
             for i in range(3)]
    logs: list[str] = []
    local = ex.get_executor("local", ex.ExecutorOptions(jobs=2, log=logs.append))
    local.submit(tasks)
    local.wait()
    assert sorted(local.results) == [t.run_id for t in tasks]
    assert all(code != 0 for code in local.results.values())
    assert "no record of D/t__p__c/fold_2" in tasks[2].log_path.read_text()
    assert sum("slot 1" in m for m in logs) >= 1 and not any("slot 2" in m for m in logs)


def test_record_test_rows_keep_their_fold_and_settings(tmp_path):
    """A record's ``test`` rows become table rows with split "test" and the run's fold, only under the settings they
    were computed with; a failed test prediction says so; a done run lacks test scores until it has a block."""
    from autoseg.evaluation.metrics import METRICS_VERSION
    from autoseg.evaluation.store_rows import run_from_record, test_rows_from_record
    from autoseg.grid.worker import needs_test

    rec = expand(_targets()[:1], [("dice", {})], "2", [1])[0]
    rec.status = "done"
    assert needs_test(rec)
    rows = [{"case": "a", "label": 1, "class_name": "x", "dice": 0.5, "iou": 1 / 3, "hd95": None, "nsd": None,
             "tp": 1, "fp": 1, "fn": 1, "split": "test"}]
    rec.test = {"metrics_version": METRICS_VERSION, "tolerance_mm": 2.0, "distances": "auto", "state": "evaluated",
                "rows": rows}
    assert not needs_test(rec) and not needs_test(rec, retry_failed=True)
    run = run_from_record(rec, tmp_path / "fold_2")
    (row,) = test_rows_from_record(rec, run, 2.0, "auto")
    assert row["split"] == "test" and row["fold"] == "2" and row["seed"] == "1" and row["method"] == "dice"
    assert row["iou"] == 1 / 3 and row["hd95"] != row["hd95"]  # None is NaN again
    assert run.n_cases == 1 and "from the run's record" in run.state
    assert test_rows_from_record(rec, run, 1.0, "auto") == [] and "tolerance 2.0 mm" in run.state
    assert test_rows_from_record(rec, run, 2.0, "always") == [] and "distances auto" in run.state
    rec.test = {**rec.test, "metrics_version": METRICS_VERSION - 1}
    assert test_rows_from_record(rec, run, 2.0, "auto") == [] and "not evaluated" in run.state
    rec.test = {"state": "failed: OSError: broken", "rows": []}
    assert test_rows_from_record(rec, run, 2.0, "auto") == [] and "failed: OSError: broken" in run.state
    assert not needs_test(rec) and needs_test(rec, retry_failed=True)


def test_test_set_decision_per_dataset(tmp_path):
    """benchmark --test-set: plan_and_train's rule (autoseg.heldout.decide) for one network per image."""
    import numpy as np
    from PIL import Image

    from autoseg.grid.runner import test_set_decisions

    dj = {"labels": {"background": 0, "a": 1}, "file_ending": ".png", "channel_names": {"0": "R", "1": "G", "2": "B"}}
    for name, labelled in (("Dataset1_L", True), ("Dataset2_U", False), ("Dataset3_None", None)):
        atomic_write_json(tmp_path / name / "dataset.json", dj)
        if labelled is None:
            continue
        (tmp_path / name / "imagesTs").mkdir()
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / name / "imagesTs" / "c_0000.png")
        if labelled:
            (tmp_path / name / "labelsTs").mkdir()
            Image.fromarray(np.zeros((4, 6), np.uint8)).save(tmp_path / name / "labelsTs" / "c.png")
    names = ["Dataset1_L", "Dataset2_U", "Dataset3_None", "Dataset1_L"]
    said: list[str] = []
    assert test_set_decisions(names, "auto", tmp_path, "cpu", said.append) == {
        "Dataset1_L": True, "Dataset2_U": False, "Dataset3_None": False}
    assert len(said) == 3 and "without labelsTs" in said[1] and "no test images" in said[2]
    assert test_set_decisions(names, "on", tmp_path, "cpu", said.append)["Dataset2_U"] is True
    assert not any(test_set_decisions(names, "off", tmp_path, "cpu", said.append).values())


def test_a_resumed_run_carries_the_earlier_attempts_time_up_to_its_checkpoint(tmp_path):
    # A run whose first attempt trained 1000 s, checkpointed, and was killed 200 s later (recording nothing),
    # then resumed: its wall time is 1000 s + the second attempt's own, not the second attempt's alone.
    from autoseg.grid.worker import carried_seconds
    from autoseg.records import FoldRecord

    def stamp(t):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))

    now = time.time()
    rec = FoldRecord(dataset="D", configuration="c", trainer="T", fold=0, loss="dice", status="running",
                     attempts=1, started=stamp(now - 1200))
    fold = tmp_path / "fold_0"
    fold.mkdir()
    assert carried_seconds(rec, fold) == 0.0  # no checkpoint: the next attempt starts from scratch
    latest = fold / "checkpoint_latest.pth"
    latest.write_bytes(b"x")
    os.utime(latest, (now - 200, now - 200))
    assert carried_seconds(rec, fold) == pytest.approx(1000, abs=2)
    # that attempt (resumed at now - 100) trains on, finishes, and its validation fails: a third attempt only
    # validates, and carries both attempts' training
    rec.started, rec.resumed_seconds = stamp(now - 100), carried_seconds(rec, fold)
    final = fold / "checkpoint_final.pth"
    final.write_bytes(b"x")
    os.utime(final, (now - 40, now - 40))
    assert carried_seconds(rec, fold) == pytest.approx(1060, abs=3)
    # a checkpoint older than the previous attempt's start adds nothing of that attempt (it failed at once)
    rec.started, rec.resumed_seconds = stamp(now - 10), carried_seconds(rec, fold)
    assert carried_seconds(rec, fold) == pytest.approx(1060, abs=3)
