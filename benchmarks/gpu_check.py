"""The GPU recipe: one prepared script that whoever has a CUDA GPU runs once, in at most 8 minutes.

Steps (each in its own process, each timed, a failure recorded and the next step run):

1. ``torch``   the installed torch sees the GPU: name, memory, capability, a bf16 matmul's TFLOP/s;
2. ``cuda_tests`` ``pytest tests/losses/test_losses_cuda.py``: every loss on the GPU equals its CPU value
               and gradient, stays finite under float16 autocast, and the GPU distance maps equal scipy's;
3. ``losses``  ``benchmarks/losses.py`` on the GPU (forward+backward of every registered loss,
               full-size batches, as a ratio to cross-entropy);
4. ``standard`` ``autoseg plan_and_train --budget standard --epochs 5`` (nnU-Net's own plan and
               network, 250 iterations per epoch, nnU-Net's mixed precision on CUDA) on the bundled
               Hippocampus data, fold 0: seconds per epoch (from nnU-Net's training log) and Dice;
5. ``boundary`` the trainer's GPU paths of the boundary losses through nnU-Net: ``inverseform`` (its
               auxiliary head) and ``hausdorff_dt`` (prediction distance maps on the GPU), 50 iterations each;
6. ``transformer`` one epoch of ``--arch transformer`` (MONAI SwinUNETR) on the same data.

Usage::

    bash scripts/setup.sh && .venv/bin/python benchmarks/gpu_check.py --out gpu_check/
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_dry     # any machine: tiny CPU versions

``--dry-run`` runs every step end to end on the CPU at toy sizes (smoke budget, 10 cases, one loss
shape, ``hausdorff_dt`` alone in the boundary step; the CUDA tests skip themselves), so the recipe
itself is tested where there is no GPU (``tests/benchmarks``). Without ``--dry-run`` and without a
CUDA GPU it stops at step 1 and says so. It writes ``gpu_check.json``
and ``gpu_check.md`` (the table to paste into docs/planning.md) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEADLINE_S = 8 * 60  # the recipe's promise: at most 8 minutes end to end on one GPU

# step -> (GPU arguments, dry-run arguments) of `autoseg plan_and_train`
TRAIN_STEPS = {
    "standard": (["--budget", "standard", "--epochs", "5", "--device", "cuda"],
                 ["--budget", "smoke", "--limit-cases", "10", "--device", "cpu"]),
    "boundary": (["--budget", "standard", "--epochs", "1", "--iterations", "50", "--device", "cuda"],
                 ["--budget", "smoke", "--limit-cases", "10", "--device", "cpu"]),
    "transformer": (["--arch", "transformer", "--budget", "standard", "--epochs", "1", "--iterations", "100",
                     "--device", "cuda"],
                    ["--arch", "transformer", "--budget", "smoke", "--limit-cases", "10", "--device", "cpu"]),
}
# the losses each training step trains (GPU, dry run)
TRAIN_LOSSES = {"standard": (["dice_ce"], ["dice_ce"]), "boundary": (["inverseform", "hausdorff_dt"], ["hausdorff_dt"]),
                "transformer": (["dice_ce"], ["dice_ce"])}
CUDA_TESTS = "tests/losses/test_losses_cuda.py"
LOSS_ARGS = (["--device", "cuda", "--repeats", "5", "--network"],
             ["--device", "cpu", "--small", "--repeats", "1", "--losses", "dice_ce", "--dims", "2d"])

_EPOCH_TIME = re.compile(r"Epoch time: ([0-9.]+) s")
_TRAIN_LOSS = re.compile(r"train_loss (-?[0-9.]+(?:e-?[0-9]+)?|nan)")


def check_torch(dry_run: bool) -> dict:
    """What torch sees; a bf16 matmul's speed where there is a GPU."""
    import torch

    out: dict = {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        out["ok"] = dry_run
        out["note"] = "no CUDA GPU visible to torch" + (" (dry run: continuing on the CPU)" if dry_run else "")
        return out
    props = torch.cuda.get_device_properties(0)
    out.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
               capability=f"{props.major}.{props.minor}", n_gpus=torch.cuda.device_count())
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    out["bf16_matmul_tflops"] = round(2 * n**3 * reps / (time.perf_counter() - t0) / 1e12, 1)
    out["ok"] = True
    return out


def _run(cmd: list[str], timeout: float, env: dict) -> tuple[subprocess.CompletedProcess | None, float, str]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(1.0, timeout))
        return proc, time.perf_counter() - t0, ""
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - t0, f"timed out after {timeout:.0f} s (the recipe's 8-minute deadline)"


def train_one(name: str, loss: str, dry_run: bool, work: Path, timeout: float, env: dict) -> dict:
    args = TRAIN_STEPS[name][1 if dry_run else 0]
    cmd = [sys.executable, "-m", "autoseg", "plan_and_train", "--loss", loss, "--folds", "0",
           "--work-dir", str(work), "--json", *args]
    proc, seconds, error = _run(cmd, timeout, env)
    out: dict = {"loss": loss, "command": " ".join(["autoseg", *cmd[3:]]), "wall_s": round(seconds, 1)}
    if proc is None or proc.returncode != 0:
        out.update(ok=False, error=error or _tail(proc.stderr if proc else ""))
        return out
    result = json.loads(proc.stdout)
    fold = Path(result["fold_dirs"]["0"])
    logs = [log.read_text(errors="replace") for log in sorted(fold.glob("training_log_*.txt"))]
    epoch_s = [float(m) for text in logs for m in _EPOCH_TIME.findall(text)]
    train_loss = [float(m) for text in logs for m in _TRAIN_LOSS.findall(text)]
    out.update(ok=True, configuration=result["configuration"], device=result["device"],
               epochs=len(epoch_s), epoch_s=[round(s, 2) for s in epoch_s], train_loss=train_loss,
               # the first epoch carries cuDNN autotuning and worker start-up: report the rest apart
               s_per_epoch_after_first=round(sum(epoch_s[1:]) / len(epoch_s[1:]), 2) if len(epoch_s) > 1 else None,
               mean_dice=result["mean_dice"], per_class_dice=result["per_class_dice"],
               mixed_precision=result["device"].startswith("cuda"), timings_s=result.get("timings_s", {}))
    return out


def train_step(name: str, dry_run: bool, work: Path, deadline: float, env: dict) -> dict:
    """One training step: a single loss's result as it is, several losses' under ``runs``."""
    losses = TRAIN_LOSSES[name][1 if dry_run else 0]
    runs: dict = {}
    t0 = time.perf_counter()
    for loss in losses:
        left = deadline - (time.perf_counter() - t0)
        runs[loss] = (train_one(name, loss, dry_run, work, left, env) if left > 5 else
                      {"loss": loss, "ok": False, "wall_s": 0, "error": "not started: the deadline had passed"})
    if len(losses) == 1:
        return runs[losses[0]]
    return {"ok": all(r["ok"] for r in runs.values()), "wall_s": round(time.perf_counter() - t0, 1), "runs": runs,
            "error": "; ".join(f"{k}: {r['error']}" for k, r in runs.items() if not r["ok"]) or None}


def cuda_tests_step(timeout: float, env: dict) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra", str(REPO / CUDA_TESTS)]
    proc, seconds, error = _run(cmd, timeout, {**env, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)})
    if proc is None:
        return {"ok": False, "wall_s": round(seconds, 1), "error": error}
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"ok": proc.returncode == 0, "wall_s": round(seconds, 1), "summary": summary,
            "error": None if proc.returncode == 0 else _tail(proc.stdout, 6000)}


def loss_step(dry_run: bool, timeout: float, env: dict) -> dict:
    cmd = [sys.executable, str(REPO / "benchmarks" / "losses.py"), *LOSS_ARGS[1 if dry_run else 0]]
    proc, seconds, error = _run(cmd, timeout, env)
    if proc is None or proc.returncode != 0:
        return {"ok": False, "wall_s": round(seconds, 1), "error": error or _tail(proc.stderr if proc else "")}
    return {"ok": True, "wall_s": round(seconds, 1), "table": proc.stdout}


def _tail(text: str, n: int = 2000) -> str:
    return text[-n:].strip()


def markdown(report: dict) -> str:
    t = report["steps"]["torch"]
    lines = [f"# GPU check ({'DRY RUN on the CPU, not a GPU measurement' if report['dry_run'] else 'GPU'})", "",
             f"- machine: {report['machine']}; torch {t.get('torch')} (CUDA build {t.get('cuda_build')}); "
             f"GPU: {t.get('device', 'none')} {t.get('memory_gib', '')} GiB; bf16 matmul "
             f"{t.get('bf16_matmul_tflops', '-')} TFLOP/s",
             f"- nnUNet_compile: {report.get('nnUNet_compile')}",
             f"- total wall time {report['wall_s']:.0f} s (deadline {report.get('deadline_s', DEADLINE_S):.0f} s)", "",
             "| step | ok | wall s | configuration | epochs | s/epoch (after the 1st) | mean Dice |",
             "|---|---|---:|---|---:|---:|---:|"]
    for name in TRAIN_STEPS:
        step = report["steps"].get(name)
        if step is None:
            continue
        for s in step.get("runs", {"": step}).values():
            label = f"{name} ({s['loss']})" if "runs" in step else name
            dice = f"{s['mean_dice']:.4f}" if s.get("mean_dice") is not None else "-"
            lines.append(f"| {label} | {'yes' if s['ok'] else 'NO'} | {s['wall_s']} | {s.get('configuration', '-')} | "
                         f"{s.get('epochs', '-')} | {s.get('s_per_epoch_after_first') or '-'} | {dice} |")
    tests = report["steps"].get("cuda_tests")
    if tests is not None:
        lines += ["", f"CUDA tests ({CUDA_TESTS}): {tests.get('summary') or tests.get('error', '')}"]
    loss = report["steps"].get("losses")
    if loss is not None:
        lines += ["", "## Loss benchmark", ""]
        lines += ["```", loss.get("table") or loss.get("error", ""), "```"]
    failed = [n for n, s in report["steps"].items() if not s.get("ok")]
    if failed:
        lines += ["", "## Failures", ""]
        lines += [f"- **{n}**: {report['steps'][n].get('error') or report['steps'][n].get('note', '')}" for n in failed]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every step at toy size on the CPU")
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json / gpu_check.md and the work folder")
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for the whole recipe")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    # the recipe's own work folder: nnU-Net's path variables would win over it (autoseg/paths.py); its other
    # settings (nnUNet_compile, nnUNet_n_proc_DA, ...) reach the training runs as the caller set them
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env.setdefault("nnUNet_def_n_proc", "2" if args.dry_run else str(min(8, os.cpu_count() or 2)))
    started = time.perf_counter()

    def left() -> float:
        return args.deadline - (time.perf_counter() - started)

    report: dict = {"dry_run": args.dry_run, "machine": f"{platform.node()} {platform.machine()} "
                    f"{os.cpu_count()} CPUs", "steps": {},
                    # nnU-Net compiles its network on CUDA unless nnUNet_compile says false (the first epoch pays)
                    "nnUNet_compile": env.get("nnUNet_compile", "unset (nnU-Net's default: on for CUDA)")}
    print(f"gpu check: step 1/6 torch{' (dry run)' if args.dry_run else ''}", flush=True)
    report["steps"]["torch"] = check_torch(args.dry_run)
    if report["steps"]["torch"]["ok"]:
        steps = ("cuda_tests", "losses", "standard", "boundary", "transformer")
        for i, name in enumerate(steps, start=2):
            print(f"gpu check: step {i}/{len(steps) + 1} {name} ({left():.0f} s left)", flush=True)
            if left() <= 5:
                report["steps"][name] = {"ok": False, "wall_s": 0, "error": "not started: the deadline had passed"}
                continue
            if name == "losses":
                report["steps"][name] = loss_step(args.dry_run, left(), env)
            elif name == "cuda_tests":
                report["steps"][name] = cuda_tests_step(left(), env)
            else:
                report["steps"][name] = train_step(name, args.dry_run, work, left(), env)
            print(f"gpu check:   {name}: {'ok' if report['steps'][name]['ok'] else 'FAILED'} "
                  f"in {report['steps'][name]['wall_s']} s", flush=True)
    report["wall_s"] = time.perf_counter() - started
    report["deadline_s"] = args.deadline
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    return 0 if all(s.get("ok") for s in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
