"""The HTML report in a real browser: headless Chromium loads it offline, every image decodes, the tables render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from eval_synthetic_tree import build_tree

from autoseg.evaluation.report import build_report

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                if shutil.which(b)), None)

pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium/Chrome on PATH (apt-get install -y chromium)")

# Runs after load and writes what the page holds into the DOM, which --dump-dom then prints.
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var result = {
    images: imgs.length,
    decoded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    tables: document.querySelectorAll('table').length,
    body_rows: document.querySelectorAll('tbody tr').length,
    title: document.title
  };
  var pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""

BROKEN_IMAGE = '<img alt="broken on purpose" src="data:image/png;base64,AAAAAAAA">'


def _probe(page_path, tmp_path) -> dict:
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", page_path.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no probe output; rc={proc.returncode} stderr={proc.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_browser")
    tree = build_tree(root, cases_per_fold=(6,), methods=("good", "twin_a", "bad"), missing=(), failed=("broken",))
    res = build_report(tree["results"], root / "report", tree["preprocessed"], tree["raw"], n_boot=50,
                       progress=None)
    return res.html, root


def test_report_renders_with_every_image_and_table(page, tmp_path):
    html_path, _ = page
    html = html_path.read_text()
    probed = tmp_path / "report_probe.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    result = _probe(probed, tmp_path)
    assert result["title"] == "autoseg loss comparison"
    assert result["images"] == html.count("<img ") >= 6
    assert result["decoded"] == result["images"]
    assert result["tables"] == html.count("<table") >= 5 and result["body_rows"] > 10


def test_probe_catches_an_image_that_does_not_decode(page, tmp_path):
    html_path, _ = page
    probed = tmp_path / "report_broken.html"
    probed.write_text(html_path.read_text().replace("</body>", BROKEN_IMAGE + PROBE + "</body>"))
    result = _probe(probed, tmp_path)
    assert result["decoded"] == result["images"] - 1
