"""Issue 12: the layouts real VERL, ROLL and SLIME runs leave, written by the real libraries
(torch's SummaryWriter, W&B 0.31 offline, SwanLab 0.10.3 offline, pandas), aligned end to
end; every aligned value is checked."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from expflow.align.pipeline import run_alignment, summary_error
from expflow.align.spec import load_spec

from .align_fixtures import env, wandb_env
from .conftest import run_cli


def f32(x: float) -> float:
    return float(np.float32(x))


def align(tmp_path: Path, aligned: list[str], frameworks: dict, **kw):
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"aligned_metrics": aligned, "frameworks": frameworks, "target": {"mode": "disabled"}}))
    return run_alignment(load_spec(spec), tmp_path / "out", plots=False, tracker=False, **kw)


def series(result, framework: str, metric: str) -> dict[int, float]:
    t = result.table
    part = t[(t["framework"] == framework) & (t["metric"] == metric)]
    return dict(zip(part["step"].tolist(), part["value"].tolist(), strict=True))


def wandb_run(root: Path, log, **init):
    import wandb

    with wandb_env(root):
        # dir: in-process W&B keeps the first WANDB_DIR it saw
        run = wandb.init(project="p", dir=str(root), settings=wandb.Settings(x_disable_stats=True), **init)
        log(run)
        run.finish()


# -- 1. two TensorBoard writers in one directory (SLIME: one SummaryWriter per process) ---
def test_two_tensorboard_writers_in_one_directory_keep_every_tag(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = tmp_path / "tb"
    a = SummaryWriter(log_dir=str(tb))  # process 1: rollout metrics, the first policy steps
    b = SummaryWriter(log_dir=str(tb))  # process 2, opened later
    for s in range(30):
        a.add_scalar("rollout/raw_reward", 0.1 * s, s)
    for s in range(20):
        a.add_scalar("actor/entropy", 1.0 + s, s)
    for s in range(10, 20):
        b.add_scalar("actor/entropy", 100.0 + s, s)  # the same tag from the later writer
        b.add_scalar("actor/pg_loss", -0.5 * s, s)
    a.close()
    b.close()
    assert len(list(tb.glob("*tfevents*"))) == 2
    result = align(tmp_path, ["rollout/raw_reward", "actor/entropy", "actor/pg_loss"],
                   {"slime": {"source": {"kind": "tensorboard", "path": str(tb)}, "fill": "none"}})
    assert series(result, "slime", "rollout/raw_reward") == {s: f32(0.1 * s) for s in range(30)}
    # a repeated step: the later writer's point
    assert series(result, "slime", "actor/entropy") == {**{s: 1.0 + s for s in range(10)},
                                                        **{s: 100.0 + s for s in range(10, 20)}}
    assert series(result, "slime", "actor/pg_loss") == {s: -0.5 * s for s in range(10, 20)}
    assert result.checks[0].status == "ok"


# -- 2. a W&B run in several files ---------------------------------------------------------
def test_a_resumed_wandb_run_continues_and_a_rewind_replaces(tmp_path):
    root = tmp_path / "w"

    def first(run):
        run.define_metric("train/step")
        run.define_metric("train/*", step_metric="train/step")
        for s in range(6):
            run.log({"train/step": s, "train/loss": 10.0 + s, "lr": 0.1 * s})

    def resumed(run):  # restarted from the checkpoint of step 4: steps 4, 5 again, then on
        for s in range(4, 9):
            run.log({"train/step": s, "train/loss": 20.0 + s, "lr": 0.2 * s})

    wandb_run(root, first, id="run1", resume="allow")
    wandb_run(root, resumed, id="run1", resume="allow")
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 2  # each file holds part of the steps
    result = align(tmp_path, ["train/loss", "lr"],
                   {"fw": {"source": {"kind": "wandb-offline", "path": str(root / "wandb")}, "fill": "none"}})
    assert series(result, "fw", "train/loss") == {**{s: 10.0 + s for s in range(4)}, **{s: 20.0 + s for s in range(4, 9)}}
    # lr has no step key: W&B's _step, which the resumed file restarts at 0, continues after
    # the first file's rows (0..5 -> 6..10); the train axis is 0..8
    assert series(result, "fw", "lr") == {**{s: 0.1 * s for s in range(6)}, **{6 + i: 0.2 * (4 + i) for i in range(3)}}
    # a list and a glob name the same files
    for i, path in enumerate(([str(r) for r in runs], str(root / "wandb" / "offline-run-*"))):
        (tmp_path / str(i)).mkdir()
        again = align(tmp_path / str(i), ["train/loss"],
                      {"fw": {"source": {"kind": "wandb-offline", "path": path}, "fill": "none"}})
        assert series(again, "fw", "train/loss") == series(result, "fw", "train/loss")


def test_one_wandb_run_per_process_is_merged_by_step_key(tmp_path):
    root = tmp_path / "w"

    def trainer(run):
        run.define_metric("train/step")
        run.define_metric("train/*", step_metric="train/step")
        for s in range(8):
            run.log({"train/step": s, "train/pg_loss": -0.01 * s})

    def rollout(run):
        run.define_metric("rollout/step")
        run.define_metric("rollout/*", step_metric="rollout/step")
        for r in range(8):
            if r != 3:  # rollout 3 never logged: back-filled from rollout 4
                run.log({"rollout/step": r, "rollout/raw_reward": 0.5 + r})

    wandb_run(root, trainer, id="rank0")
    wandb_run(root, rollout, id="rollout")
    result = align(tmp_path, ["train/pg_loss", "rollout/raw_reward"],
                   {"slime": {"source": {"kind": "wandb-offline", "path": str(root)}}})
    assert series(result, "slime", "train/pg_loss") == {s: -0.01 * s for s in range(8)}
    assert series(result, "slime", "rollout/raw_reward") == {r: 0.5 + (4 if r == 3 else r) for r in range(8)}


# -- 3. wide CSV with cells that are not numbers --------------------------------------------
def test_wide_csv_bad_cells_are_missing_values_counted_per_column(tmp_path):
    csv = tmp_path / "roll.csv"
    pd.DataFrame({"step": [0, 1, 2, 3], "loss": [1.0, "-", 0.8, 0.7], "acc": ["-", 0.5, "n/a", 0.9],
                  "note": ["a", "b", "c", "d"], "ok": [1.0, 2.0, None, 4.0]}).to_csv(csv, index=False)
    result = align(tmp_path, ["loss", "acc", "ok", "note"],
                   {"roll": {"source": {"kind": "csv", "path": str(csv)}, "fill": "none"}})
    assert series(result, "roll", "loss") == {0: 1.0, 2: 0.8, 3: 0.7}
    assert series(result, "roll", "acc") == {1: 0.5, 3: 0.9}
    assert series(result, "roll", "ok") == {0: 1.0, 1: 2.0, 3: 4.0}
    check = result.checks[0]
    assert check.missing == ["note"]  # text: not a metric
    assert check.warnings == [
        f"{csv}: column 'loss': 1 cell(s) not a number, read as missing (first: line 3: '-')",
        f"{csv}: column 'acc': 2 cell(s) not a number, read as missing (first: line 2: '-')",
    ]
    assert result.warnings[0].startswith("roll: ")


# -- 4. VERL's step-0 validation: no value before a series starts ---------------------------
def test_verl_step_zero_validation_invents_nothing_before_a_series(tmp_path):
    import swanlab

    root = tmp_path / "verl"
    with env(SWANLAB_ROOT=str(tmp_path / "sw")), open(os.devnull, "w") as quiet, \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        swanlab.init(mode="offline", log_dir=str(root), project="verl", name="verl", reinit=True)
        swanlab.log({"val-core/gsm8k/reward/mean@1": 0.1}, step=0)  # val_before_train
        for s in range(1, 11):
            swanlab.log({"actor/pg_loss": -0.1 * s}, step=s)
            if s % 5 == 0:
                swanlab.log({"val-core/gsm8k/reward/mean@1": 0.1 + s, "val-aux/gsm8k/score/mean@1": 2.0 * s}, step=s)
        swanlab.finish()
    result = align(tmp_path, ["actor/pg_loss", "val-core/gsm8k/reward/mean@1", "val-aux/gsm8k/score/mean@1"],
                   {"verl": {"source": {"kind": "swanlab-offline", "path": str(root)}}})
    assert series(result, "verl", "actor/pg_loss") == {s: -0.1 * s for s in range(1, 11)}  # no step 0
    # back-filled inside the series (0..10): steps 1-4 take step 5's value, as seed 002 does
    assert series(result, "verl", "val-core/gsm8k/reward/mean@1") == {
        0: 0.1, **{s: 5.1 for s in range(1, 6)}, **{s: 10.1 for s in range(6, 11)}}
    # a series that starts at step 5: nothing at 0-4
    assert series(result, "verl", "val-aux/gsm8k/score/mean@1") == {5: 10.0, **{s: 20.0 for s in range(6, 11)}}


# -- 5. failures stay per framework ----------------------------------------------------------
def test_a_bare_swanlab_id_fails_its_framework_only(tmp_path, monkeypatch):
    csv = tmp_path / "ok.csv"
    pd.DataFrame({"step": [0, 1], "loss": [1.0, 0.5]}).to_csv(csv, index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({
        "aligned_metrics": ["loss"],
        "frameworks": {"verl": {"source": {"kind": "swanlab", "id": "7s7hg9w5tuwcf7jzvu5rg"}},
                       "roll": {"source": {"kind": "csv", "path": str(csv)}},
                       "slime": {"source": {"kind": "csv", "path": str(tmp_path)}}},  # a directory
        "target": {"mode": "disabled"}}))
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)  # no key, no network: the cloud call fails
    proc = run_cli("align", str(spec), "--out", str(tmp_path / "out"), "--no-plots", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "verl: swanlab 7s7hg9w5tuwcf7jzvu5rg" in err[0] and "slime:" in err[0], err
    assert "1 other framework(s) aligned" in err[0]
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert {k: v["status"] for k, v in report["frameworks"].items()} == {"verl": "error", "roll": "ok", "slime": "error"}
    assert pd.read_csv(tmp_path / "out" / "aligned.csv")["value"].tolist() == [1.0, 0.5]


def test_a_bare_swanlab_id_is_found_in_the_users_projects(monkeypatch):
    import swanlab

    from expflow.align.sources.swanlab import SwanLabCloudSource
    from expflow.align.spec import SourceSpec

    class Exp:
        state, finished_at = "FINISHED", "2026-01-01"

        def __init__(self, run_id):
            self.run_id = run_id

        def summary(self):
            return {"loss": {}}

        def metrics(self, keys, all):
            return {"list": [{"key": "loss", "metrics": [{"step": 1, "value": 0.5}]}]}

    class Api:
        username = "me"

        def __init__(self, api_key=None, host=None):
            pass

        def projects(self, user, all):
            assert user == "me" and all
            return [type("P", (), {"path": "me/a"})(), type("P", (), {"path": "me/b"})()]

        def runs(self, path):
            return [Exp("zzz")] if path == "me/a" else [Exp("x1"), Exp("abc")]

        def run(self, path):
            assert path == "me/b/abc"
            return Exp("abc")

    monkeypatch.setattr(swanlab, "Api", Api)
    raw = SwanLabCloudSource(SourceSpec(kind="swanlab", id="abc")).read()
    assert raw.points["value"].tolist() == [0.5]
    with pytest.raises(Exception, match="not found in the projects of 'me'"):
        SwanLabCloudSource(SourceSpec(kind="swanlab", id="nope")).read()


# -- 6. only scalars become metrics -----------------------------------------------------------
def test_images_mixed_with_scalars_give_only_the_scalars(tmp_path):
    import swanlab
    import wandb
    from torch.utils.tensorboard import SummaryWriter

    img = np.zeros((4, 4, 3), dtype=np.uint8)
    root = tmp_path / "w"
    wandb_run(root, lambda run: [run.log({"loss": 1.0 / (s + 1), "rollout/sample_img": wandb.Image(img),
                                          "n": {"a": float(s)}}) for s in range(3)])
    sw = tmp_path / "sw"
    with env(SWANLAB_ROOT=str(tmp_path / "swroot")), open(os.devnull, "w") as quiet, \
            contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        swanlab.init(mode="offline", log_dir=str(sw), project="p", name="x", reinit=True)
        for s in range(3):
            swanlab.log({"loss": 1.0 / (s + 1), "rollout/sample_img": swanlab.Image(img)}, step=s)
        swanlab.finish()
    tb = tmp_path / "tb"
    w = SummaryWriter(log_dir=str(tb))
    for s in range(3):
        w.add_scalar("loss", 1.0 / (s + 1), s)
        w.add_image("rollout/sample_img", img, s, dataformats="HWC")
        w.add_histogram("hist", np.arange(5.0), s)
        w.add_text("txt", "hello", s)
    w.close()
    from expflow.align.sources import make_source
    from expflow.align.spec import SourceSpec

    for kind, path in (("wandb-offline", root), ("swanlab-offline", sw), ("tensorboard", tb)):
        raw = make_source(SourceSpec(kind=kind, path=str(path))).read()
        expected = {"loss", "n.a"} if kind == "wandb-offline" else {"loss"}
        assert set(raw.metrics) == expected, (kind, raw.metrics)
        loss = raw.points[raw.points["metric"] == "loss"]["value"].tolist()
        assert loss == [f32(1.0 / (s + 1)) if kind == "tensorboard" else 1.0 / (s + 1) for s in range(3)]
    result = align(tmp_path, ["loss"], {"w": {"source": {"kind": "wandb-offline", "path": str(root)}}})
    assert series(result, "w", "loss") == {s: 1.0 / (s + 1) for s in range(3)}
    assert summary_error(result) is None


# -- 7. presets: the names the pipelines really log -------------------------------------------
ROLL_RLVR_NAMES = ["critic/score/mean", "critic/rewards/mean", "critic/entropy/mean", "val_correct/all/mean",
                   "actor/pg_loss", "actor/kl_loss", "actor/approxkl", "actor/policykl", "actor/clipfrac",
                   "actor_train/grad_norm", "token/response_length/mean", "system/tps_gpu", "time/step_total"]


@pytest.mark.parametrize("preset", ["roll", "roll-rlvr"])
def test_roll_preset_on_an_rlvr_run_finds_every_metric_it_logs(tmp_path, preset):
    from expflow.align.presets import PRESETS

    from .align_fixtures import write_tensorboard

    tb = write_tensorboard(tmp_path / "tb", {n: [(s, float(i) + 0.25 * s) for s in range(4)]
                                             for i, n in enumerate(ROLL_RLVR_NAMES)})
    aligned = sorted({PRESETS[preset][n] for n in ROLL_RLVR_NAMES})
    assert len(aligned) == 13
    result = align(tmp_path, aligned, {"roll": {"source": {"kind": "tensorboard", "path": str(tb)},
                                                "mapping": f"preset:{preset}"}})
    assert result.checks[0].missing == [] and result.checks[0].status == "ok"
    for i, n in enumerate(ROLL_RLVR_NAMES):
        assert series(result, "roll", PRESETS[preset][n]) == {s: float(i) + 0.25 * s for s in range(4)}


def test_verl_eval_reward_is_found_by_pattern_whatever_the_data_source(tmp_path):
    from .align_fixtures import write_tensorboard

    tb = write_tensorboard(tmp_path / "tb", {
        "critic/score/mean": [(s, 0.5 * s) for s in range(1, 4)],
        "val-core/openai/gsm8k/reward/mean@4": [(s, 1.0 + s) for s in (0, 3)],  # data source with a slash: no match
        "val-core/math/reward/mean@4": [(s, 2.0 + s) for s in (0, 3)],
        "val-core/gsm8k/reward/mean@4": [(s, 3.0 + s) for s in (0, 3)],
        "val-aux/gsm8k/reward/std@4": [(s, 9.0) for s in (0, 3)],
    })
    result = align(tmp_path, ["algorithm/reward", "algorithm/eval_reward"],
                   {"verl": {"source": {"kind": "tensorboard", "path": str(tb)}, "mapping": "preset:verl", "fill": "none"}})
    assert series(result, "verl", "algorithm/eval_reward") == {0: 3.0, 3: 6.0}  # gsm8k sorts first
    assert result.checks[0].notes == ["algorithm/eval_reward: from val-core/gsm8k/reward/mean@4 "
                                      "(also matched: val-core/math/reward/mean@4)"]


# -- 8. SLIME's rollout axis ---------------------------------------------------------------------
def write_slime_run(root: Path, *, always_train_step: bool) -> Path:
    """SLIME with 2 train steps per rollout (rollout_batch_size 4 x n_samples 2 / global batch 4):
    train/step = rollout_id * 2 + step_id; rollout/step and eval/step = rollout_id (or the train
    step with --wandb-always-use-train-step)."""
    config = {"rollout_batch_size": 4, "n_samples_per_prompt": 2, "global_batch_size": 4,
              "wandb_always_use_train_step": always_train_step}

    def log(run):
        for key, pattern in (("train/step", "train/*"), ("rollout/step", "rollout/*"), ("eval/step", "eval/*")):
            run.define_metric(key)
            run.define_metric(pattern, step_metric=key)
        for rid in range(5):
            rstep = rid * 2 if always_train_step else rid
            run.log({"rollout/step": rstep, "rollout/raw_reward": 10.0 + rid})
            if rid % 2 == 0:
                run.log({"eval/step": rstep, "eval/gsm8k": 0.1 * rid, "eval/gsm8k-truncated_ratio": 0.5})
            for sid in range(2):
                run.log({"train/step": rid * 2 + sid, "train/pg_loss": -1.0 * (rid * 2 + sid)})

    wandb_run(root, log, config=config)
    return root


@pytest.mark.parametrize("always_train_step", [False, True])
def test_slime_rollout_metrics_land_on_the_train_step_their_rollout_starts(tmp_path, always_train_step):
    root = write_slime_run(tmp_path / "w", always_train_step=always_train_step)
    result = align(tmp_path, ["algorithm/reward", "algorithm/policy_loss", "algorithm/eval_reward"],
                   {"slime": {"source": {"kind": "wandb-offline", "path": str(root)}, "mapping": "preset:slime"}})
    assert series(result, "slime", "algorithm/policy_loss") == {s: -1.0 * s for s in range(10)}
    # rollout r at train step 2r; 2r - 1 back-filled from it; nothing after rollout 4 (step 8)
    assert series(result, "slime", "algorithm/reward") == {s: 10.0 + (s + 1) // 2 for s in range(9)}
    assert series(result, "slime", "algorithm/eval_reward") == {s: 0.1 * (2 * ((s + 3) // 4)) for s in range(9)}
    notes = result.checks[0].notes
    assert notes == ([] if always_train_step else
                     ["rollout/step, eval/step × 2 (train steps per rollout, from the run's config)"])


def test_slime_steps_per_rollout_from_the_spec(tmp_path):
    root = write_slime_run(tmp_path / "w", always_train_step=False)
    result = align(tmp_path, ["algorithm/reward"],
                   {"slime": {"source": {"kind": "wandb-offline", "path": str(root)}, "mapping": "preset:slime",
                              "steps_per_rollout": 1, "fill": "none"}})
    assert series(result, "slime", "algorithm/reward") == {r: 10.0 + r for r in range(5)}  # as logged


# -- 10. re-runs rebuild only what changed ------------------------------------------------------
def test_an_unchanged_rerun_writes_nothing_and_a_change_redraws_only_its_plots(tmp_path, monkeypatch):
    from .conftest import tree_digest

    monkeypatch.setenv("SWANLAB_ROOT", str(tmp_path / "swanlab-root"))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"step": [0, 1, 2], "x": [1.0, 2.0, 3.0]}).to_csv(a, index=False)
    pd.DataFrame({"step": [0, 1, 2], "y": [5.0, 6.0, 7.0]}).to_csv(b, index=False)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"aligned_metrics": ["x", "y"],
                                "frameworks": {"a": {"source": {"kind": "csv", "path": str(a)}},
                                               "b": {"source": {"kind": "csv", "path": str(b)}}},
                                "target": {"project": "p", "mode": "offline"}}))
    out = tmp_path / "out"
    first = run_cli("align", str(spec), "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr

    def mtimes():
        return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    before, digest = mtimes(), tree_digest(out)
    again = run_cli("align", str(spec), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0 and "(unchanged:" in again.stdout and "[!] a: 1 of 2" in again.stdout
    assert mtimes() == before and tree_digest(out) == digest  # nothing written
    pd.DataFrame({"step": [0, 1, 2, 3], "y": [5.0, 6.0, 7.0, 8.0]}).to_csv(b, index=False)
    changed = run_cli("align", str(spec), "--out", str(out), cwd=tmp_path)
    assert changed.returncode == 0 and "(unchanged:" not in changed.stdout
    after = mtimes()
    assert after["plots/x.png"] == before["plots/x.png"]  # a's series is as it was
    assert after["plots/y.png"] != before["plots/y.png"] and after["report.html"] != before["report.html"]
    tracker = json.loads((out / "check.json").read_text())["tracker"]
    assert tracker["a"]["status"] == "unchanged" and tracker["b"]["status"] == "written"
