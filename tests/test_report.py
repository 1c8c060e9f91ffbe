"""`expflow report`: one self-contained HTML page, rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from expflow.report import build_report
from expflow.svgchart import Scale, nice_ticks

from .conftest import run_cli
from .test_status import curve, fake_package

SWEEP = [(1e-3, 0.6), (3e-3, 0.8), (1e-2, 0.9)]
CURVE_METRICS = ("val/acc", "val/loss", "train/loss")


def sweep(runs: Path) -> list[str]:
    """Three runs of an lr sweep, the middle one with an analysis."""
    ids = []
    for i, (lr, acc) in enumerate(SWEEP):
        pkg = fake_package(runs, f"lr{i}", overrides=(f"optim.lr={lr}", "trainer.threads=1", f"paths.runs={runs}"),
                           config={"optim": {"lr": lr}}, points=curve(acc))
        ids.append(pkg.run_id)
    folder = runs / "lr1" / "analysis" / "accuracy"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"accuracy": 0.8}))
    (folder / "confusion_matrix.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (folder / "analysis.json").write_text(json.dumps({"script": "accuracy", "results": "results.json",
                                                      "files": ["confusion_matrix.png", "results.json"],
                                                      "checkpoint": {"step": 30}, "time": "2026-01-01T00:00:00"}))
    return ids


class Elements(HTMLParser):
    """Every element's tag and attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and cls in (a.get("class") or "").split()]


def parse(html: str) -> Elements:
    page = Elements()
    page.feed(html)
    return page


def curves_by_metric(page: Elements) -> dict[str, list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for a in page.find("polyline", "curve"):
        found[a["data-metric"]].append(a["data-run"])
    return found


def test_report_is_one_self_contained_page(tmp_path):
    runs = tmp_path / "runs"
    ids = sweep(runs)
    out = tmp_path / "site" / "report.html"
    info = build_report(runs, out)
    assert info["runs"] == 3 and info["swept"] == ["optim.lr"] and info["main_metric"] == "val/acc"
    html = out.read_text()
    for external in ("http:", "https:", "<link", " src=", "@import", "url("):
        assert external not in html, external  # nothing is fetched from anywhere
    page = parse(html)
    curves = curves_by_metric(page)
    for metric in CURVE_METRICS:
        assert sorted(curves[metric]) == sorted(ids), metric  # one curve per run, per metric
    points = page.find("circle", "point")
    assert sorted(p["data-run"] for p in points) == sorted(ids)  # final val/acc vs optim.lr
    rows = [a for t, a in page.elements if t == "tr" and "data-run" in a]
    assert [r["data-run"] for r in rows] == ids
    links = [a["href"] for t, a in page.elements if t == "a" and "analysis" in a.get("href", "")]
    assert links and all((out.parent / unquote(h)).exists() for h in links)
    assert any(h.endswith("confusion_matrix.png") for h in links)


def test_report_command_and_empty_runs(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    proc = run_cli("report", "--runs", str(runs))
    assert proc.returncode == 0, proc.stderr
    html = (runs / "report.html").read_text()
    assert "No metric records yet" in html and "0 runs" in proc.stdout + html


def test_chart_scales():
    assert nice_ticks(0.51, 0.947) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert nice_ticks(0, 65) == [0, 20, 40, 60]
    assert Scale.fit([0.001, 0.003, 0.01], log=True).ticks() == [0.001, 0.002, 0.005, 0.01]
    assert Scale.fit([5.0, 5.0]).lo < 5.0 < Scale.fit([5.0, 5.0]).hi


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("EXPFLOW_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def headless(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars",
           *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_renders_in_headless_chromium(tmp_path):
    runs = tmp_path / "runs"
    ids = sweep(runs)
    out = tmp_path / "report.html"
    build_report(runs, out)
    dom = headless(out, tmp_path / "profile", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    page = parse(dom.stdout)
    html_tag = next(a for t, a in page.elements if t == "html")
    assert html_tag.get("data-ready") == "1"  # the page's script ran (no error, nothing to fetch)
    curves = curves_by_metric(page)
    for metric in CURVE_METRICS:
        assert sorted(curves[metric]) == sorted(ids), metric
    text = " ".join(page.text)
    assert "Learning curves" in text and "Final val/acc against each swept parameter" in text
    assert all(run_id in text for run_id in ids)

    shot = tmp_path / "report.png"
    proc = headless(out, tmp_path / "profile", "--window-size=1280,2200", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    assert png_size(shot) == (1280, 2200)
    assert shot.stat().st_size > 50_000  # tables, text and curves: far from a blank page


@pytest.mark.parametrize("damage", ["[1, 2]", '{"files": "x.png"}', '{"checkpoint": {"step": -1}}', "{"])
def test_a_damaged_analysis_record_is_named_not_a_traceback(tmp_path, damage):
    """analysis/<script>/analysis.json of the wrong shape (or torn): `show` and the report
    say which file is unreadable and why; the other analyses are still listed."""
    runs = tmp_path / "runs"
    pkg = fake_package(runs, "a1", points=curve(0.5))
    for name in ("bad", "good"):
        (pkg.analysis_dir / name).mkdir(parents=True)
        (pkg.analysis_dir / name / "results.json").write_text('{"acc": 0.5}')
    (pkg.analysis_dir / "good" / "analysis.json").write_text(json.dumps(
        {"script": "good", "results": "results.json", "files": ["results.json"], "applicable": True}))
    (pkg.analysis_dir / "bad" / "analysis.json").write_text(damage)
    shown = run_cli("show", str(pkg.path), env={"COLUMNS": "400"})
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    assert "bad: unreadable" in shown.stdout and "bad/analysis.json" in shown.stdout
    assert "good" in shown.stdout and "acc=0.5" in shown.stdout
    page = build_report(runs, tmp_path / "report.html")
    assert page is not None
    html = (tmp_path / "report.html").read_text()
    assert "unreadable" in html and "bad/analysis.json" in html and "acc=0.5" in html


def test_the_page_is_rendered_from_templates_with_every_value_escaped(tmp_path):
    from expflow.package import Status

    from .test_status import mark

    runs = tmp_path / "runs"
    pkg = fake_package(runs, "a1", points=curve(0.5))
    mark(pkg, Status.CRASHED, error={"type": "ValueError", "message": "bad <b>value</b> & more"})
    out = tmp_path / "report.html"
    build_report(runs, out, title="<script>alert(1)</script> & co")
    html = out.read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html
    assert "<b>value</b>" not in html and "bad &lt;b&gt;value&lt;/b&gt; &amp; more" in html
    assert html.count("<script>") == 1 and "data-ready" in html  # only the page's own script
    assert html.count('<polyline class="curve"') == 3  # the charts are markup, not escaped text


def many_runs(runs: Path) -> dict[str, str]:
    """25 packages: 22 runs of a three-parameter sweep (analyses, notes), one run crashed
    and continued, and two reruns of the first run. Returns {run id: kind}."""
    from expflow.package import Status

    from .test_status import history, mark

    kinds = {}
    for i in range(22):
        lr, seed, width = (1e-3, 3e-3, 1e-2)[i % 3], i % 4, (64, 128)[i % 2]
        pkg = fake_package(runs, f"run{i:02d}-lr{lr:g}-seed{seed}-w{width}",
                           overrides=(f"optim.lr={lr}", f"seed={seed}", f"model.width={width}"),
                           config={"optim": {"lr": lr}, "seed": seed, "model": {"width": width}},
                           points=curve(0.5 + i / 50))
        for name in ("accuracy", "learning_curves"):
            folder = pkg.analysis_dir / name
            folder.mkdir(parents=True)
            (folder / "analysis.json").write_text(json.dumps({"script": name, "files": [], "checkpoint": {"step": 30}}))
        kinds[pkg.run_id] = "run"
    crashed = fake_package(runs, "run22-crashed-then-continued", overrides=("optim.lr=0.003", "seed=1"),
                           config={"optim": {"lr": 3e-3}, "seed": 1}, points=curve(0.7))
    history(crashed, [("PREPARING", 0), ("RUNNING", 1), ("CRASHED", 20), ("PREPARING", 900), ("RUNNING", 901),
                      ("COMPLETED", 960)])
    kinds[crashed.run_id] = "continued"
    first = next(iter(kinds))
    for k in range(2):
        rerun = fake_package(runs / ".reruns", f"{first}-{k + 1}", overrides=("optim.lr=0.001", "seed=0"),
                             config={"optim": {"lr": 1e-3}, "seed": 0}, points=curve(0.5))
        rerun.update_manifest(lambda m: m.update(origin={"rerun_of": first, "path": str(runs / first)}))
        mark(rerun, Status.COMPLETED)
        kinds[rerun.run_id] = "rerun"
    return kinds


def rgb(hex_color: str) -> tuple[int, int, int]:
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def test_a_report_of_25_runs_in_headless_chromium(tmp_path):
    """Distinct colours for every run (reruns in a shade of their run's), the analyses column in
    view at 1280 px with the run and status columns pinned, and the screenshot shows each colour."""
    from PIL import Image

    runs = tmp_path / "runs"
    kinds = many_runs(runs)
    out = tmp_path / "report.html"
    info = build_report(runs, out)
    assert info["runs"] == 25 and sorted(info["swept"]) == ["model.width", "optim.lr", "seed"]
    html = out.read_text()
    page = parse(html)
    rows = [a["data-run"] for t, a in page.elements if t == "tr" and "data-run" in a]
    first = next(k for k, v in kinds.items() if v == "run")
    assert rows[:3] == [first, *sorted(k for k, v in kinds.items() if v == "rerun")]  # reruns after their run
    colors = {}
    for a in page.find("polyline", "curve"):
        colors[a["data-run"]] = a["stroke"]
    assert len(colors) == 25 and len(set(colors.values())) == 25, colors
    families = [c for run, c in colors.items() if kinds[run] != "rerun"]
    closest = min(sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b), strict=True)) ** 0.5
                  for i, a in enumerate(families) for b in families[i + 1:])
    assert closest > 30, f"two runs' colours are {closest:.0f} apart in RGB"
    reruns = page.find("polyline", "rerun")
    assert reruns and all(a["data-run"] in kinds and kinds[a["data-run"]] == "rerun" for a in reruns)
    assert "rerun of " + first in " ".join(page.text)

    dom = headless(out, tmp_path / "profile", "--window-size=1280,2200", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    table = next(a for t, a in parse(dom.stdout).elements if t == "table" and a.get("id") == "run-table")
    visible = table["data-visible-columns"].split("\t")
    assert {"run", "status", "val/acc", "analyses"} <= set(visible), visible

    shot = tmp_path / "report.png"
    proc = headless(out, tmp_path / "profile", "--window-size=1280,2200", f"--screenshot={shot}")
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    pixels = Image.open(shot).convert("RGB")
    seen = {c for _, c in pixels.getcolors(1 << 24)}
    missing = [run for run, c in colors.items()
               if not any(all(abs(p - q) <= 3 for p, q in zip(px, rgb(c), strict=True)) for px in seen)]
    assert not missing, f"colours not on the screenshot: {missing}"


def test_integer_axes_get_integer_ticks():
    assert Scale.fit([0, 1, 2, 3]).padded().ticks() == [0, 1, 2, 3]  # a seed axis: never 0.25
    assert Scale.fit([0, 1]).ticks() == [0, 1]
    assert Scale.fit([3, 3]).ticks() == [2, 3, 4]
    assert nice_ticks(0, 2, integer=True) == [0, 1, 2] and nice_ticks(0, 1000, integer=True)[1] == 200
    assert Scale.fit([0.0, 0.5, 1.0]).ticks() == [0, 0.2, 0.4, 0.6, 0.8, 1.0]  # real values keep fine ticks
    from expflow.svgchart import scatter_chart

    svg = scatter_chart([(0, 0.5, "a", "#000000"), (1, 0.6, "b", "#111111"), (2, 0.7, "c", "#222222")],
                        title="t", xlabel="seed", ylabel="val/acc")
    xticks = [t for t in parse(svg).text if t.strip() and t.strip().replace(".", "").isdigit()]
    assert "0.5" not in xticks[-3:] and not any(t in xticks for t in ("0.25", "0.75", "1.5"))


def test_palette_keeps_any_number_of_runs_distinct():
    from expflow.svgchart import PALETTE, palette, shade

    assert palette(10) == list(PALETTE)
    for n in (11, 25, 60):
        colors = palette(n)
        assert len(set(colors)) == n
        closest = min(sum((x - y) ** 2 for x, y in zip(rgb(a), rgb(b), strict=True)) ** 0.5
                      for i, a in enumerate(colors) for b in colors[i + 1:])
        assert closest > (30 if n <= 25 else 15), (n, closest)
    assert shade("#1f77b4", 1) != shade("#1f77b4", 2) != "#1f77b4"
