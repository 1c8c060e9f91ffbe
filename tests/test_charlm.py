"""The character-level LM example (expflow.examples.charlm): a runner on dict batches of
padded variable-length sequences, through train, continue, rerun, analyze and report."""

from __future__ import annotations

import io
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from expflow.examples.charlm import (
    IGNORE,
    CharGRU,
    CharText,
    CharVocab,
    descriptions,
    line_windows,
    pad_collate,
    token_sums,
)
from expflow.package import SavePackage, Status, effective_metrics

from .conftest import REPO, run_cli, small_overrides

PRESET = ["+freq=charlm", "trainer=debug", "gpu=cpu"]


def build(compose, *overrides, seed=0, package_dir=None):
    from expflow.loop import build_runner
    from expflow.runner import RunContext

    cfg = compose([*PRESET, *overrides])
    torch.manual_seed(seed)
    ctx = RunContext(cfg=cfg, device=torch.device("cpu"), seed=int(cfg.seed), package_dir=package_dir)
    return build_runner(cfg, ctx)


def points(pkg: SavePackage) -> list[tuple[int, dict]]:
    return [(r["step"], r["values"]) for r in effective_metrics(pkg.scan_records().records)]


def samples(pkg: SavePackage) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((pkg.path / "outputs" / "samples").glob("*.txt"))}


# -- unit ----------------------------------------------------------------------------------
def test_collate_pads_right_and_masks_the_padding():
    windows = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([10, 11, 12]), torch.tensor([13, 14, 15, 16])]
    batch = pad_collate(windows)
    assert isinstance(batch, dict) and sorted(batch) == ["attention_mask", "input_ids", "labels"]
    assert all(t.shape == (3, 4) and t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [10, 11, 0, 0], [13, 14, 15, 0]]
    assert batch["labels"].tolist() == [[6, 7, 8, 9], [11, 12, IGNORE, IGNORE], [14, 15, 16, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]


def test_padding_never_changes_the_loss():
    """A window's loss sum is the same alone and in a padded batch: the mask keeps padding out."""
    torch.manual_seed(0)
    model = CharGRU(embed_dim=8, hidden=16).eval()
    short, long = torch.tensor([20, 30, 40]), torch.tensor([21, 31, 41, 51, 61, 71])
    alone = pad_collate([short])
    padded = pad_collate([short, long])
    with torch.no_grad():
        a = token_sums(model(alone["input_ids"]), alone["labels"], alone["attention_mask"])
        one = {k: v[:1] for k, v in padded.items()}
        b = token_sums(model(one["input_ids"]), one["labels"], one["attention_mask"])
        both = token_sums(model(padded["input_ids"]), padded["labels"], padded["attention_mask"])
    assert float(a[2]) == float(b[2]) == 2 and int(both[2]) == 2 + 5
    assert torch.allclose(a[0], b[0], atol=1e-6)


def test_windows_are_whole_lines_within_paragraphs_and_differ_in_length():
    text = "Title\n=====\n\nfirst line of a paragraph\nsecond line\n\n\nanother one\n" + "x" * 50
    windows = line_windows(text, max_len=30, min_len=2)
    assert windows == ["Title\n=====\n", "first line of a paragraph\n", "second line\n", "another one\n",
                       "x" * 30, "x" * 20 + "\n"]  # whole lines, never across a blank line; long lines cut
    data = CharText(max_chars=20_000)
    full = descriptions()
    assert 15_000 < len(data.text) <= 20_000 and full.startswith(data.text)
    assert full[len(data.text):].startswith("\n\n")  # cut at a paragraph boundary
    lengths = {len(w) for w in data.train.windows}
    assert len(lengths) > 10 and max(lengths) <= 96 and min(lengths) >= 16
    assert len(data.train) + len(data.val) == len(line_windows(data.text, 96, 16)) and len(data.val) > 0
    assert [len(ids) for ids in data.train.ids] == [len(w) for w in data.train.windows]
    assert data.vocab.decode(data.vocab.encode("Iris\n\u00e9")) == "Iris\n?"
    again = CharText(max_chars=20_000)
    assert again.val.windows == data.val.windows  # the split depends on split_seed only


def test_runner_builds_steps_and_has_two_parameter_groups(compose, tmp_path):
    runner = build(compose, package_dir=tmp_path)
    from expflow.lifecycle import TrainState

    assert isinstance(runner.model, CharGRU) and runner.text.vocab_size == CharVocab().size == 98
    widths = set()
    for batch in runner.train_data(0):
        assert isinstance(batch, dict) and sorted(batch) == ["attention_mask", "input_ids", "labels"]
        widths.add(batch["input_ids"].shape[1])
    assert len(widths) > 1  # variable-length batches

    decay, no_decay = runner.optimizer.param_groups
    optim = runner.ctx.cfg.optim
    assert isinstance(runner.optimizer, torch.optim.AdamW) and decay["lr"] == no_decay["lr"] == optim.lr
    assert optim.weight_decay > 0 and (decay["name"], decay["weight_decay"]) == ("decay", optim.weight_decay)
    assert (no_decay["name"], no_decay["weight_decay"]) == ("no_decay", 0.0)
    names = {id(p): n for n, p in runner.model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["head.weight", "rnn.weight_hh_l0", "rnn.weight_ih_l0"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "embed.weight", "head.bias", "norm.bias", "norm.weight", "rnn.bias_hh_l0", "rnn.bias_ih_l0"]

    state = TrainState(config=runner.ctx.cfg, max_epochs=1)
    metrics = runner.train_step(next(iter(runner.train_data(0))), state)
    assert sorted(metrics) == ["train/loss", "train/lr"]
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert math.isfinite(runner.end_epoch(state)["train/epoch_loss"])
    runner.train_mode(False)
    val = runner.validate(state)
    assert sorted(val) == ["val/acc", "val/loss", "val/ppl"]
    assert val["val/ppl"] == pytest.approx(math.exp(val["val/loss"])) and 0.0 <= val["val/acc"] <= 1.0
    state.epoch = 1
    runner.visualize(state)
    runner.visualize(state)  # greedy: the same text again
    sample = (tmp_path / "outputs" / "samples" / "epoch001.txt").read_text()
    assert sample.startswith(runner.prompt) and len(sample) == len(runner.prompt) + runner.sample_chars + 1


def test_state_dict_round_trip(compose):
    from expflow.lifecycle import TrainState

    a = build(compose, seed=0)
    state = TrainState(config=a.ctx.cfg, max_epochs=1)
    batches = list(a.train_data(0))[:3]
    for batch in batches[:2]:
        a.train_step(batch, state)
    assert sorted(a.state_dict()) == ["model", "optimizer", "scheduler"]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)  # as a checkpoint holds it
    buf.seek(0)
    b = build(compose, seed=1)
    assert not torch.equal(a.model.head.weight, b.model.head.weight)
    b.load_state_dict(torch.load(buf, weights_only=False))
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert b.optimizer.state_dict()["state"].keys() == a.optimizer.state_dict()["state"].keys()
    assert a.train_step(batches[2], state)["train/loss"].item() == b.train_step(batches[2], state)["train/loss"].item()
    assert torch.equal(a.model.rnn.weight_hh_l0, b.model.rnn.weight_hh_l0)


# -- end to end ----------------------------------------------------------------------------
def train(runs: Path, run_id: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(*small_overrides(runs, "+freq=charlm", "trainer.progress=plain", f"run_id={run_id}", *extra),
                   module="expflow.train")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("charlm") / "runs"
    started = time.monotonic()
    proc = train(runs, "lm", "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"charlm: 2 epochs in {time.monotonic() - started:.1f}s")
    return runs, SavePackage.open(runs / "lm")


@pytest.mark.slow
def test_train_completes_with_token_metrics_and_samples(trained):
    runs, pkg = trained
    assert pkg.status() is Status.COMPLETED
    recorded = {k for _, values in points(pkg) for k in values}
    assert {"train/loss", "train/lr", "train/epoch_loss", "val/loss", "val/ppl", "val/acc"} <= recorded
    vals = [values for _, values in points(pkg) if "val/loss" in values]
    assert len(vals) == 2 and vals[-1]["val/loss"] < vals[0]["val/loss"]
    assert all(v["val/ppl"] == pytest.approx(math.exp(v["val/loss"])) for v in vals)
    texts = samples(pkg)
    assert sorted(texts) == ["epoch001.txt", "epoch002.txt"]
    assert all(t.startswith(pkg.config().runner.prompt) for t in texts.values())
    cfg = pkg.config()
    assert cfg.model is None and cfg.dataset is None and cfg.lifecycle.hold_best == "val/loss"
    held = [c for c in pkg.checkpoints().list() if "persistent" in c.tracks]
    assert held  # the best val/loss checkpoint is held


@pytest.mark.slow
def test_rerun_is_bit_identical(trained):
    runs, pkg = trained
    proc = run_cli("rerun", str(pkg.path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bit-identical" in proc.stdout


@pytest.mark.slow
def test_analyze_learning_curves_accuracy_not_applicable_and_report(trained):
    runs, pkg = trained
    curves = run_cli("analyze", str(pkg.path), "learning_curves")
    assert curves.returncode == 0, curves.stdout + curves.stderr
    results = json.loads((pkg.analysis_dir / "learning_curves" / "results.json").read_text())
    assert results["val/loss"]["goal"] == "min" and results["val/loss"]["points"] == 2
    for script in ("accuracy", "compare_checkpoints"):
        proc = run_cli("analyze", str(pkg.path), script)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"analysis {script} does not apply" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stdout + proc.stderr
        rec = json.loads((pkg.analysis_dir / script / "analysis.json").read_text())
        assert rec["applicable"] is False and rec["reason"]
    report = run_cli("report", "--runs", str(runs))
    assert report.returncode == 0, report.stdout + report.stderr
    html = (runs / "report.html").read_text()
    assert 'data-run="lm"' in html and "val/ppl" in html
    assert "<b>accuracy</b>: does not apply" in html


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_continue_matches_an_uninterrupted_run(tmp_path):
    runs = tmp_path / "runs"
    extra = ("trainer.max_epochs=4", "trainer.log_every_n_steps=1")
    ref = train(runs, "reference", *extra)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    reference = SavePackage.open(runs / "reference")

    pkg_dir = runs / "killed"
    cmd = [sys.executable, "-m", "expflow.train",
           *small_overrides(runs, "+freq=charlm", "trainer.progress=plain", "run_id=killed", *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:  # until the package lists its first checkpoint
            assert proc.poll() is None, "training ended before its first checkpoint was seen"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            if (pkg_dir / "checkpoints" / "index.json").exists() and SavePackage.open(pkg_dir).checkpoints().list():
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pkg = SavePackage.open(pkg_dir)
    deadline = time.monotonic() + 20
    while pkg.status().active:  # its worker dies with it
        assert time.monotonic() < deadline, pkg.manifest()["status_history"][-1]
        time.sleep(0.05)
    assert pkg.status() is Status.CRASHED, "the kill landed after the run completed"
    assert len(pkg.checkpoints().list()) < len(reference.checkpoints().list())

    cont = run_cli("continue", str(pkg_dir))
    assert cont.returncode == 0, cont.stdout + cont.stderr
    assert pkg.status() is Status.COMPLETED
    assert pkg.scan_records().problems == []
    assert points(pkg) == points(reference)  # exact floats, every step
    assert samples(pkg) == samples(reference) and len(samples(pkg)) == 4
    assert pkg.checkpoints().files_on_disk() == reference.checkpoints().files_on_disk()
