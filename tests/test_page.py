"""The HTML report page: self-contained, one bar pair per prunable group, rendered in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import surgeon
from surgeon.keys import PLAN_KEY
from surgeon.page import report_html


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module]:
    import torchvision

    folder = tmp_path_factory.mktemp("page")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    slim = surgeon.slim(model, 0.5, x)
    path = report_html(
        model, slim, x, folder / "r.html", threads=1, runs=5, warmup=1, plots=folder / "png"
    )
    return path, folder, slim


def _prunable(slim: torch.nn.Module) -> int:
    return sum(1 for w in slim.meta[PLAN_KEY]["widths"] if "reason" not in w)


def test_the_page_holds_everything_itself(page):
    path, folder, slim = page
    text = path.read_text()
    # nothing to fetch: no script, no stylesheet or image link
    assert "<script" not in text and "<link" not in text and "<img" not in text
    # the only URLs are XML namespaces (names, never fetched)
    assert len(re.findall(r"https?://", text)) == len(
        re.findall(r'xmlns(?::\w+)?="https?://', text)
    )
    n = _prunable(slim)
    before = re.findall(r'id="width-before-\d+"', text)
    assert len(before) == n == len(re.findall(r'id="width-after-\d+"', text))
    assert "Time per layer" in text and "layer1.0" in text
    pngs = sorted(p.name for p in (folder / "png").iterdir())
    assert pngs == ["latency.png", "layers.png", "widths.png"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    pytest.skip("no Chromium here (dev/test.sh installs Debian's package where apt can)")


def _net_log(path: Path) -> dict:
    """Chromium's net log (JSON; a log cut short at exit lacks its closing brackets)."""
    text = path.read_text().rstrip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(text.rstrip(",") + "]}")


def _flags() -> list[str]:
    return [
        _chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
    ]  # fmt: skip


def _render(page: Path, folder: Path) -> tuple[set[str], Path, str]:
    """Open ``page`` in headless Chromium: the URLs the page requested (those whose network
    isolation key is the page's file; the browser's own traffic is not), a screenshot, and
    what it logged."""
    netlog, shot = folder / f"{page.stem}.net.json", folder / f"{page.stem}.png"
    run = subprocess.run(
        [*_flags(), f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0",
         f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    log = _net_log(netlog)
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    from_page, urls = set(), {}
    for e in log.get("events", []):
        p, source = e.get("params"), e.get("source", {}).get("id")
        if not isinstance(p, dict):
            continue
        if isinstance(p.get("url"), str):
            urls.setdefault(source, p["url"])
        key = str(p.get("network_isolation_key", ""))
        if kinds.get(e["type"]) == "URL_REQUEST_START_JOB" and key.startswith("file://"):
            from_page.add(source)  # the page's file asked for it, not the browser
    return {urls[s] for s in from_page if s in urls}, shot, run.stderr


def test_the_render_check_sees_a_page_that_fetches(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://example.invalid/x.png"></body></html>')
    requested, _, _ = _render(bad, tmp_path)
    assert requested == {"http://example.invalid/x.png"}


def test_the_page_renders_in_a_headless_browser(page, tmp_path):
    path, _, slim = page
    requested, shot, logged = _render(path, tmp_path)
    assert shot.exists(), logged[-2000:]
    assert "CONSOLE" not in logged  # the page logged nothing, error or other
    assert requested == set()  # no request left the page
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    colours = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::97]}
    assert pixels.std() > 0.05 and len(colours) > 20  # not blank
    dom = subprocess.run(
        [*_flags(), "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    n = _prunable(slim)
    assert len(re.findall(r'id="width-before-\d+"', dom)) == n
    assert len(re.findall(r'id="width-after-\d+"', dom)) == n


class _Cumulative(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=1))  # no rule: the group is blocked here


def test_a_blocked_group_names_its_source_line():
    model, x = _Cumulative().eval(), torch.randn(1, 3, 4, 4)
    widths = surgeon.slim(model, 0.5, x).meta[PLAN_KEY]["widths"]
    blocked = next(w for w in widths if "cumsum" in w.get("reason", ""))
    assert blocked["name"] == "a" and blocked["channels"] == [8, 8]
    assert blocked["source"].startswith("test_page.py:") and "torch.cumsum" in blocked["source"]
