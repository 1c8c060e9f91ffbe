"""Packing runs onto GPUs: longer runs first (Snakemake job priorities from duration
estimates), and `expflow run` taking a freed device before its heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from expflow.errors import ConfigError
from expflow.package import SavePackage, Status
from expflow.workflow import RunSpec, plan_workflow, run_priorities, train_seconds

from .conftest import CONF, REPO, assert_one_line_error, run_cli, tree_digest
from .test_workflow import make_project, snakemake


def spec(run_id: str, *, family: str = "", estimate: float | None = None) -> RunSpec:
    return RunSpec(run_id, (), 1, 0, family=family, estimate=estimate)


# -- priorities ----------------------------------------------------------------------
def test_config_estimates_rank_longer_runs_higher_and_unknown_ones_at_the_median():
    runs = {r.run_id: r for r in [spec("a", estimate=10), spec("b", estimate=40), spec("c", estimate=20),
                                  spec("d", estimate=20), spec("e")]}
    prio = run_priorities(runs, {})
    assert prio == {"b": 3, "c": 2, "d": 2, "a": 1, "e": 2}


def test_without_any_estimate_every_job_keeps_snakemakes_default():
    runs = {r.run_id: r for r in [spec("a", family="f"), spec("b", family="g")]}
    assert run_priorities(runs, {}) == {}
    assert run_priorities(runs, {"zzz": 5.0}) == {}  # times of runs outside the plan tell nothing


def test_earlier_train_times_estimate_the_rest_of_their_family():
    # Two families; a0/b0 trained before (their benchmark times); a1, a2, b1 are new seeds.
    runs = {r.run_id: r for r in [spec("a0", family="A"), spec("a1", family="A"), spec("a2", family="A"),
                                  spec("b0", family="B"), spec("b1", family="B"), spec("c0", family="C")]}
    prio = run_priorities(runs, {"a0": 100.0, "b0": 10.0})
    assert prio["a1"] == prio["a2"] > prio["b1"]
    assert prio["c0"] in (prio["a1"], prio["b1"])  # unknown family: at the median estimate


def test_config_estimates_are_never_mixed_with_train_times():
    runs = {r.run_id: r for r in [spec("a", family="A", estimate=1.0), spec("b", family="B")]}
    # b's family trained for a long time, but the config estimate is what counts: b is unknown.
    assert run_priorities(runs, {"b": 1e6}) == {"a": 1, "b": 1}


def test_train_seconds_reads_snakemake_benchmark_files_and_skips_damaged_ones(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (tmp_path / "aaaaaaaaaaaa.tsv").write_text(header + "12.5\t0:00:12\t1\t1\t1\t1\t0\t0\t50\t6\n")
    (tmp_path / "bbbbbbbbbbbb.tsv").write_text("garbage")
    (tmp_path / "cccccccccccc.tsv").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "dddddddddddd.tsv").write_text(header + "not-a-number\t-\n")
    (tmp_path / "notes.txt").write_text("s\n1\n")
    assert train_seconds(tmp_path) == {"aaaaaaaaaaaa": 12.5}
    assert train_seconds(tmp_path / "missing") == {}


def test_the_estimate_key_comes_from_the_composed_configs():
    config = {"sweep": ["trainer.max_epochs=1,3", "trainer.max_epochs=2 seed=5"], "config_dir": str(CONF),
              "train": {"estimate": "trainer.max_epochs"}}
    runs = plan_workflow(config)
    assert sorted(s.estimate for s in runs.values()) == [1.0, 2.0, 3.0]
    families = plan_workflow({**config, "sweep": ["seed=1,2", "seed=3 optim.lr=0.5"]}, families=True)
    assert len({s.family for s in families.values()}) == 2  # seeds 1 and 2 are one family


def test_an_estimate_key_no_run_has_is_one_clear_error():
    config = {"sweep": ["seed=1,2"], "config_dir": str(CONF), "train": {"estimate": "trainer.max_epoch"}}
    with pytest.raises(ConfigError, match=r"'train.estimate': 'trainer.max_epoch' is not a number in any run"):
        plan_workflow(config)


# -- expflow run leases first --------------------------------------------------------
PROBE = """
import sys

import expflow.gpu as gpu

# The package, OmegaConf and the trainer; and what Python's own dataclasses, pathlib,
# typing and argparse would add to every train job's start (~15 ms, twice that with the
# cores busy) while the device it is about to lease waits.
HEAVY = ("omegaconf", "expflow.launch", "expflow.package.package", "rich", "torch",
         "argparse", "dataclasses", "pathlib", "typing")
seen = []
real = gpu.place_job


def probe(*args, **kwargs):
    seen.append(sorted(m for m in HEAVY if m in sys.modules))
    return real(*args, **kwargs)


gpu.place_job = probe
from expflow.cli import main

code = main(["run", sys.argv[1]])
print("LOADED-AT-LEASE", seen, flush=True)
sys.exit(code)
"""


def materialize(runs: Path, *overrides: str) -> SavePackage:
    proc = run_cli("materialize", "--runs", str(runs), "--config-dir", str(CONF), "--",
                   "trainer=debug", "trainer.threads=1", f"code.root={REPO}", *overrides)
    assert proc.returncode == 0, proc.stderr
    (path,) = [p for p in runs.iterdir() if (p / "manifest.json").is_file()]
    return SavePackage.open(path)


def run_with_probe(pkg: SavePackage, env: dict) -> tuple[subprocess.CompletedProcess, list]:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(pkg.path)], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    loaded = [line for line in proc.stdout.splitlines() if line.startswith("LOADED-AT-LEASE")]
    return proc, json.loads(loaded[0].split(" ", 1)[1].replace("'", '"')) if loaded else []


@pytest.fixture
def gpu_env(tmp_path):
    env = dict(os.environ, EXPFLOW_SIMULATED_GPUS="1x81920", EXPFLOW_LEASE_DIR=str(tmp_path / "leases"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_expflow_run_leases_before_it_imports_the_package_and_omegaconf(tmp_path, gpu_env):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "trainer.max_epochs=1")
    assert pkg.manifest()["lease_request"] == {"count": 1, "mem_mb": 0, "max_jobs_per_gpu": 1, "allow_cpu": True}
    proc, loaded = run_with_probe(pkg, gpu_env)
    assert proc.returncode == 0, proc.stderr
    assert loaded == [[]], loaded  # one lease, taken with none of the heavy modules loaded
    m = pkg.manifest()
    assert pkg.status() is Status.COMPLETED and m["gpus"] == [0]
    (lease,) = m["leases"]
    assert lease["acquired"] <= lease["released"]
    # COMPLETED: a second `expflow run` leases nothing and leaves the package as it is.
    proc, loaded = run_with_probe(pkg, gpu_env)
    assert proc.returncode == 0 and loaded == [] and len(pkg.manifest()["leases"]) == 1


def test_a_package_without_a_recorded_request_is_leased_the_usual_way(tmp_path, gpu_env):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "trainer.max_epochs=1")
    m = json.loads(pkg.manifest_path.read_text())
    del m["lease_request"]  # as packages written before the request was recorded
    pkg.manifest_path.write_text(json.dumps(m))
    proc, loaded = run_with_probe(pkg, gpu_env)
    assert proc.returncode == 0, proc.stderr
    assert len(loaded) == 1 and "expflow.package.package" in loaded[0]  # after the package's checks
    assert pkg.status() is Status.COMPLETED and len(pkg.manifest()["leases"]) == 1


def test_the_config_decides_when_the_manifests_request_disagrees(tmp_path, gpu_env):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "trainer.max_epochs=1")
    m = json.loads(pkg.manifest_path.read_text())
    m["lease_request"]["count"] = 0  # edited by hand: the config still asks for one GPU
    pkg.manifest_path.write_text(json.dumps(m))
    proc, loaded = run_with_probe(pkg, gpu_env)
    assert proc.returncode == 0, proc.stderr
    assert len(loaded) == 2  # the early lease, released, then the config's
    assert pkg.status() is Status.COMPLETED and pkg.manifest()["gpus"] == [0]


@pytest.mark.parametrize("key, value", [("count", -1), ("mem_mb", -5), ("max_jobs_per_gpu", 0)])
def test_a_request_out_of_range_in_the_manifest_leases_nothing_early(tmp_path, gpu_env, key, value):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "trainer.max_epochs=1")
    m = json.loads(pkg.manifest_path.read_text())
    m["lease_request"][key] = value  # edited by hand: never a lease the config could not ask for
    pkg.manifest_path.write_text(json.dumps(m))
    proc, loaded = run_with_probe(pkg, gpu_env)
    assert proc.returncode == 0, proc.stderr
    assert len(loaded) == 1 and "expflow.package.package" in loaded[0]  # leased the usual way, after the checks
    assert pkg.status() is Status.COMPLETED and pkg.manifest()["gpus"] == [0]


def test_no_gpu_and_no_cpu_fallback_is_one_line_recorded_in_the_package(tmp_path):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "gpu.allow_cpu=false")
    # A scheduler that granted no device (CUDA_VISIBLE_DEVICES empty): no GPU, on any machine.
    env = {"EXPFLOW_SIMULATED_GPUS": "1x81920", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases"),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = run_cli("run", str(pkg.path), env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "gpu.allow_cpu" in proc.stderr.strip().splitlines()[-1]
    m = pkg.manifest()  # pending again, with the reason (the early lease failed quietly, the usual one said it)
    assert not m.get("leases") and m["status"] == "QUEUED"
    assert m["status_history"][-1]["note"].startswith("not started:") and "gpu.allow_cpu" in m["status_history"][-1]["note"]


# -- the workflow starts longer runs first ---------------------------------------------
@pytest.mark.slow
def test_workflow_trains_longer_runs_first_on_a_single_gpu(tmp_path):
    workflow = {
        "sweep": ["trainer.max_epochs=1,3,2"],
        "common": ["+freq=regression", "trainer=debug", "trainer.threads=1", "gpu.count=1"],
        "train": {"threads": 1, "retries": 0, "estimate": "trainer.max_epochs"},
        "report": {"enabled": False},
    }
    proj = make_project(tmp_path, workflow)
    env = {"EXPFLOW_SIMULATED_GPUS": "1x81920", "EXPFLOW_LEASE_DIR": str(tmp_path / "leases")}
    # Every package first: then all three train jobs are ready at once, and with one GPU
    # the order they lease it in is Snakemake's choice alone, by priority.
    made = snakemake(proj, "--cores", "2", "--until", "package", env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    proc = snakemake(proj, "--cores", "2", "--resources", "gpu=1", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pkgs = [SavePackage.open(p) for p in sorted((proj / "runs").iterdir()) if (p / "manifest.json").is_file()]
    order = sorted(pkgs, key=lambda p: p.manifest()["leases"][0]["acquired"])
    assert [int(p.config().trainer.max_epochs) for p in order] == [3, 2, 1]
    spans = sorted((p.manifest()["leases"][0]["acquired"], p.manifest()["leases"][0]["released"]) for p in pkgs)
    assert all(s2 >= e1 for (_, e1), (s2, _) in zip(spans, spans[1:], strict=False))

    # Their train times (Snakemake's benchmark files) now estimate new seeds of each config.
    seconds = train_seconds(proj / "runs" / ".workflow" / "benchmarks" / "train")
    assert set(seconds) == {p.path.name for p in pkgs} and all(s > 0 for s in seconds.values())
    more = {"sweep": ["trainer.max_epochs=1,3,2 seed=0,1"], "common": workflow["common"],
            "config_dir": str(proj / "conf")}
    runs = plan_workflow(more, families=True)
    prio = run_priorities(runs, seconds)
    by_epochs: dict[int, set[int]] = {}
    for rid, s in runs.items():
        epochs = int(next(o for o in s.overrides if o.startswith("trainer.max_epochs=")).split("=")[1])
        by_epochs.setdefault(epochs, set()).add(prio[rid])
    assert all(len(v) == 1 for v in by_epochs.values())  # a seed takes its family's estimate
    ranked = sorted(by_epochs, key=lambda e: next(iter(by_epochs[e])))
    assert ranked == sorted(by_epochs, key=lambda e: seconds[next(
        p.path.name for p in pkgs if int(p.config().trainer.max_epochs) == e)])


def test_the_train_rules_run_command_is_read_without_argparse_and_anything_else_by_it():
    from expflow.cli import build_parser, plain_run

    for argv in (["run", "runs/abc"], ["run", "runs/abc", "--working-tree"], ["run", "--working-tree", "runs/abc"]):
        args = build_parser().parse_args(argv)  # the fast reading says what argparse says
        assert plain_run(argv) == (args.package, args.working_tree)
    for argv in (["run"], ["run", "-h"], ["run", "--help"], ["run", "a", "b"], ["run", "--", "-x"], ["run", ""],
                 ["show", "runs/abc"], ["run", "--working-tree"]):
        assert plain_run(argv) is None, argv  # help, errors and other commands: the full parser


def test_the_train_jobs_quick_exit_still_runs_atexit_handlers_and_flushes_its_output(tmp_path):
    # `expflow run` exits without the interpreter's teardown: what a normal exit does for
    # the user (atexit handlers, buffered output, the exit status) still happens.
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('atexit ran'))\n"
            f"sys.argv = ['expflow', 'run', {str(tmp_path / 'nothing')!r}]\n"
            "from expflow.cli import command\n"
            "print('buffered', end=' ')\n"
            "command()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "buffered atexit ran\n"
    assert proc.stderr.startswith("expflow: error: ") and "nothing" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_lease_directory_that_cannot_be_written_is_one_line_and_the_package_stays_as_it_was(tmp_path, gpu_env,
                                                                                            where):
    pkg = materialize(tmp_path / "runs", "+freq=regression", "trainer.max_epochs=1")
    (tmp_path / "a-file").write_text("not a directory")
    before = tree_digest(pkg.path)
    proc = run_cli("run", str(pkg.path), env={"EXPFLOW_SIMULATED_GPUS": gpu_env["EXPFLOW_SIMULATED_GPUS"],
                                              "EXPFLOW_LEASE_DIR": str(tmp_path / where)})
    assert_one_line_error(proc, "the GPU lease table cannot be used", "EXPFLOW_LEASE_DIR")
    # Still QUEUED, nothing else touched; its history says why it did not start.
    after = tree_digest(pkg.path)
    assert {k: v for k, v in after.items() if "manifest" not in k} == \
        {k: v for k, v in before.items() if "manifest" not in k}
    assert pkg.status() is Status.QUEUED
    assert "the GPU lease table cannot be used" in pkg.manifest()["status_history"][-1]["note"]
