"""The HTML report renders in a real browser: headless Chromium (Debian's `chromium`, which
`make test` installs) loads a report built from the committed results, every figure decodes,
every section shows content, nothing overflows the page width, and a screenshot is taken."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser", "google-chrome") if (found := shutil.which(name))), None
)

# Appended to a copy of the report (the report itself carries no script): after the page and
# its inlined images load, write what the browser sees into an attribute --dump-dom prints.
PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const sections = [...document.querySelectorAll("h2[id]")].map(h => {
    let height = 0;
    for (let el = h.nextElementSibling; el && el.tagName !== "H2"; el = el.nextElementSibling)
      height += el.offsetHeight;
    return [h.id, height];
  });
  document.body.setAttribute("data-probe", JSON.stringify({
    images: images.length,
    decoded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    tables: document.querySelectorAll("table").length,
    sections: sections,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
  }));
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    home = tmp_path / "home"  # the browser's profile and caches stay out of the user's home
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={home / 'profile'}",
            "--window-size=1280,1600",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_report_renders_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; `make test` installs it (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    from crl_bench.report import build

    results = tmp_path / "results"
    shutil.copytree(REPO / "results", results)
    page = build(results)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = _chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', done.stdout)
    assert found, f"the probe did not run: {done.stderr[-2000:]}"
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    figures = (
        len(list(results.glob("*/figures/*.png")))
        + len(list(results.glob("*/*/*/curve.png")))
        + len(list(results.glob("*/*/*/*-seed*/curve.png")))
    )
    assert seen["images"] == figures > 0 and seen["decoded"] == seen["images"]
    assert seen["tables"] >= 5
    empty = [name for name, height in seen["sections"] if height <= 0]
    assert len(seen["sections"]) == 13 and not empty, f"sections with nothing shown: {empty}"
    assert seen["overflow"] <= 0, f"the page is {seen['overflow']} px wider than the window"
    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.stat().st_size > 20_000, done.stderr[-2000:]
    if os.environ.get("CRL_BENCH_SCREENSHOT"):  # to look at it: CRL_BENCH_SCREENSHOT=report.png pytest -k chromium
        shutil.copy(shot, os.environ["CRL_BENCH_SCREENSHOT"])
