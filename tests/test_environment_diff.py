"""The environment a package records (software once per distinct environment in the store,
the machine per training process) and `expflow diff` between two packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from expflow.package import SavePackage, environment

from .conftest import assert_one_line_error, run_cli
from .test_train_e2e import make_project


def fake_distribution(site: Path, name: str, version: str) -> None:
    """A distribution as pip leaves it (its .dist-info), on a directory of sys.path."""
    for old in site.glob(f"{name}-*.dist-info"):
        shutil.rmtree(old)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def packages(runs: Path) -> list[SavePackage]:
    return [SavePackage.open(p) for p in sorted(runs.iterdir()) if (p / "manifest.json").is_file()]


@pytest.mark.slow
def test_a_thousand_packages_in_one_environment_store_it_once(tmp_path):
    code = tmp_path / "code"
    (code / "src").mkdir(parents=True)
    (code / "src" / "train.py").write_text("print('hi')\n")
    store = tmp_path / "runs" / ".store"
    for i in range(1000):
        SavePackage.create(tmp_path / "runs" / f"r{i:04d}", config={"run_id": f"r{i:04d}", "seed": i},
                           store=store, code_root=code)
    objects = [p for p in (store / "environments").rglob("*.json") if "index" not in p.parts]
    assert len(objects) == 1
    first, last = SavePackage.open(tmp_path / "runs" / "r0000"), SavePackage.open(tmp_path / "runs" / "r0999")
    sha = first.manifest()["environment"]
    assert last.manifest()["environment"] == sha
    linked = first.path / "environment" / f"{sha}.json"
    assert linked.stat().st_ino == objects[0].stat().st_ino  # a hardlink, not a copy
    env = json.loads(linked.read_text())
    assert env["distributions"]["torch"]["version"] == env["torch"]["version"]  # torch's build, not imported
    assert {"expflow", "hydra-core", "omegaconf", "numpy"} <= set(env["distributions"])
    assert env["python"]["executable"] and env["python"]["version"]


def test_machine_facts_name_the_leased_gpus_and_the_slurm_job(monkeypatch):
    monkeypatch.setenv("EXPFLOW_SIMULATED_GPUS", "4x16000")
    facts = environment.machine_facts({"CUDA_VISIBLE_DEVICES": "1,3", "SLURM_JOB_ID": "42",
                                       "SLURM_JOB_PARTITION": "gpu", "SLURM_JOB_NODELIST": "n[1-2]",
                                       "SLURM_CPUS_PER_TASK": "8"})
    assert [(g["index"], g["memory_mb"]) for g in facts["gpus"]] == [(1, 16000), (3, 16000)]
    assert facts["slurm"] == {"job_id": "42", "partition": "gpu", "nodes": "n[1-2]", "cpus_per_task": "8"}
    assert environment.machine_facts({})["gpus"] == [] and environment.machine_facts({})["slurm"] is None


@pytest.mark.parametrize("edit, needle", [
    (lambda env: env.update(format="expflow.environment/9"), "format \"expflow.environment/9\", this expflow reads \"expflow.environment/1\""),
    (lambda env: env.pop("format"), "key 'format': missing"),
    (lambda env: env["distributions"].update(x={"version": 3}), "distributions.x.version"),
])
def test_an_environment_record_of_another_format_or_shape_is_one_line(tmp_path, edit, needle):
    from expflow.errors import PackageError

    record = environment.software_environment()
    assert environment.FORMAT == record["format"]
    edit(record)
    path = tmp_path / environment.PACKAGE_DIR / "abc.json"
    path.parent.mkdir()
    path.write_text(json.dumps(record))
    with pytest.raises(PackageError) as info:
        environment.read(tmp_path, "abc")
    assert str(path) in info.value.one_line() and needle in info.value.one_line(), info.value.one_line()


@pytest.mark.slow
def test_diff_of_a_sweep_names_the_swept_value_and_of_a_rerun_the_upgraded_package(tmp_path):
    proj = make_project(tmp_path)
    site = tmp_path / "site"
    fake_distribution(site, "labtool", "1.0")
    env = {"PYTHONPATH": f"{proj / 'src'}:{site}"}
    proc = run_cli("-m", "optim.lr=1e-3,3e-3", "+freq=smoke", "trainer.threads=1", cwd=proj, env=env,
                   module="expflow.train")
    assert proc.returncode == 0, proc.stderr
    a, b = packages(proj / "runs")
    for pkg in (a, b):  # each training process recorded where it ran, and its software
        (entry,) = pkg.manifest()["environments"]
        assert entry["host"] and entry["gpus"] == [] and entry["software"] == pkg.manifest()["environment"]
        assert environment.read(pkg.path, entry["software"])["distributions"]["labtool"]["version"] == "1.0"

    out = run_cli("diff", str(a.path), str(b.path), "--json", cwd=proj, env=env)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    # The swept value, and nothing else (its interpolated copy is marked as following from it).
    assert [c["key"] for c in d["config"] if not c.get("follows")] == ["optim.lr"]
    assert [(c["key"], c["follows"]) for c in d["config"] if c.get("follows")] == [("optim.optimizer.lr", "optim.lr")]
    lrs = {c[side] for c in d["config"] for side in "ab"}
    assert lrs == {1e-3, 3e-3}
    assert len(d["overrides"]["only_a"]) == len(d["overrides"]["only_b"]) == 1
    assert "optim.lr" in d["overrides"]["only_a"][0] and "optim.lr" in d["overrides"]["only_b"][0]
    assert d["code"] == [] and d["environment"]["same"] and d["environment"]["changes"] == []
    assert d["metrics"]["step"] is not None and any(v["a"] != v["b"] for v in d["metrics"]["values"])
    text = run_cli("diff", str(a.path), str(b.path), cwd=proj, env=env)
    assert text.returncode == 0 and "optim.lr: 0.001 -> 0.003" in text.stdout and "code: the same" in text.stdout

    # The lab upgrades a package, then reruns the run: the diff names that package alone.
    fake_distribution(site, "labtool", "2.0")
    rerun = run_cli("rerun", str(a.path), cwd=proj, env=env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    (again,) = [p for p in packages(proj / "runs") if p.path not in (a.path, b.path)] or \
        [SavePackage.open(p.parent) for p in (proj / "runs").rglob("manifest.json")
         if p.parent not in (a.path, b.path)]
    d = json.loads(run_cli("diff", str(a.path), str(again.path), "--json", cwd=proj, env=env).stdout)
    assert d["config"] == [] and d["code"] == []
    assert [(c["key"], c["a"], c["b"]) for c in d["environment"]["changes"]] == [
        ("distributions.labtool", "1.0", "2.0")]


def test_diff_bad_input_is_one_line(tmp_path):
    from .test_status import fake_package

    runs = tmp_path / "runs"
    a = fake_package(runs, "r1")
    assert_one_line_error(run_cli("diff", str(a.path), str(tmp_path / "nope")), "no such directory")
    b = fake_package(runs, "r2")
    (b.path / "config.yaml").write_text("{{{ not yaml")
    assert_one_line_error(run_cli("diff", str(a.path), str(b.path)), "config.yaml")
