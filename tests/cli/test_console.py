"""The quiet console: nnU-Net-style output (this process, its children, C-level writes) lands in the
log file; autoseg's own lines reach the terminal; the terminal is restored after an error."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, os, subprocess, sys
    from autoseg import console

    def child():
        print("spawned worker output", flush=True)

    if __name__ == "__main__":
        log = sys.argv[1]
        print("before capture", flush=True)
        with console.capture(log) as path:
            print("python print inside")
            sys.stderr.write("python stderr inside\\n")
            os.write(1, b"raw fd write inside\\n")
            subprocess.run([sys.executable, "-c", "print('subprocess inside')"], check=True)
            p = mp.get_context("spawn").Process(target=child); p.start(); p.join()
            with console.capture("/nonexistent/never/used.log"):   # nested: keeps the outer file
                print("nested print")
            console.say("autoseg line")
            console.say("autoseg error line", err=True)
            assert console.log_path() == path
        print("after capture", flush=True)
        assert console.log_path() is None
        try:
            with console.capture(log):
                raise RuntimeError("boom")
        except RuntimeError:
            print("terminal restored after error", flush=True)
""")


def test_capture_sends_everything_but_say_to_the_log(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    log = tmp_path / "logs" / "nnunet.log"
    proc = subprocess.run([sys.executable, str(script), str(log)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["before capture", "autoseg line", "after capture",
                                        "terminal restored after error"]
    assert proc.stderr.strip() == "autoseg error line"
    text = log.read_text()
    for line in ("python print inside", "python stderr inside", "raw fd write inside", "subprocess inside",
                 "spawned worker output", "nested print"):
        assert line in text, line
    assert "autoseg line" not in text and "before capture" not in text


def test_disabled_capture_prints_normally(capsys, tmp_path):
    from autoseg import console

    with console.capture(tmp_path / "x.log", enabled=False) as path:
        print("visible")
        console.say("also visible")
    assert path is None and not (tmp_path / "x.log").exists()
    assert capsys.readouterr().out == "visible\nalso visible\n"
