"""Every option of every config group composes and instantiates; bad input is one line."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from expflow.config import expand_sweep, sweeper_params, validate_config
from expflow.errors import ConfigError

from .conftest import CONF, assert_one_line_error, run_cli

GROUPS = ["model", "dataset", "optim", "trainer", "checkpoint", "tracker", "gpu", "runner"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


CASES = [f"{g}={o}" for g in GROUPS for o in options(g)] + [f"+freq={o}" for o in options("freq")]


def build_and_step(cfg):
    """The config's runner builds on the CPU and takes one training step and a validation."""
    from expflow.lifecycle import TrainState
    from expflow.loop import build_runner
    from expflow.runner import RunContext, is_command

    if is_command(cfg):
        runner = instantiate(cfg.runner)
        assert runner.spec.argv
        return
    ctx = RunContext(cfg=cfg, device=torch.device("cpu"), seed=int(cfg.seed))
    runner = build_runner(cfg, ctx)
    state = TrainState(config=cfg, max_epochs=1)
    metrics = runner.train_step(next(iter(runner.train_data(0))), state)
    assert metrics and all(torch.isfinite(torch.as_tensor(float(v))) for v in metrics.values())
    runner.train_mode(False)
    assert all(isinstance(k, str) for k in (runner.validate(state) or {}))
    assert runner.state_dict()


def instantiate_all(cfg):
    build_and_step(cfg)
    if cfg.runner._target_ != "expflow.runner.supervised.SupervisedRunner":
        return  # a runner that builds its own model and data from the config (done above)
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    data = instantiate(cfg.dataset)
    x, y = next(iter(torch.utils.data.DataLoader(data.train_set, batch_size=4)))
    out = model(x)
    assert data.task.loss(out, y).ndim == 0  # model and dataset fit together
    opt = instantiate(cfg.optim.optimizer)(model.parameters())
    if cfg.optim.scheduler is not None:
        instantiate(cfg.optim.scheduler)(opt)
    instantiate(cfg.lifecycle)
    tracker = instantiate(cfg.tracker)
    tracker.log({"a": 1.0}, step=0)
    tracker.finish("COMPLETED")


@pytest.mark.parametrize("override", CASES)
def test_every_option_composes_and_instantiates(compose, override):
    overrides = [override]
    if override.startswith("model=") and "quadratic" in override:
        overrides.append("dataset=quadratic")
    if override.startswith("dataset=") and "quadratic" in override:
        overrides.append("model=quadratic_mlp")
    if override == "runner=command":
        overrides.append("runner.argv=[python,train.py]")
    cfg = compose(overrides)
    validate_config(cfg)
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    instantiate_all(cfg)


def test_groups_have_options():
    for g in GROUPS + ["freq"]:
        assert options(g), g


def test_required_knobs_exist(compose):
    cfg = compose([])
    assert cfg.seed == 0 and cfg.trainer.max_epochs >= 1 and cfg.paths.runs == "runs"
    assert cfg.optim.optimizer._partial_ and cfg.optim.scheduler._partial_
    assert cfg.model._target_.endswith("MLP") and cfg.dataset._target_.endswith("DigitsData")


def test_generated_run_ids_are_distinct(compose):
    ids = {compose([]).run_id for _ in range(5)}
    assert len(ids) == 5


def test_lr_sweep_declares_values(compose):
    cfg = compose(["+freq=lr_sweep"], return_hydra_config=True)
    assert cfg.optim.lr == 3e-3
    jobs = expand_sweep([], sweeper_params(cfg))
    assert jobs == [["optim.lr=0.001"], ["optim.lr=0.003"], ["optim.lr=0.01"]]


def test_command_line_sweep_replaces_declared_values():
    jobs = expand_sweep(["optim.lr=0.5", "seed=range(2)"], {"optim.lr": "1,2,3"})
    assert jobs == [["optim.lr=0.5", "seed=0"], ["optim.lr=0.5", "seed=1"]]


@pytest.mark.parametrize(
    "override, needles",
    [
        (["trainer.max_epochs=abc"], ["trainer.max_epochs", "Integer"]),
        (["model=nope"], ["'nope'", "'model'", "cnn, mlp"]),
        (["trainer.nope=1"], ["'trainer.nope'", "max_epochs"]),
        (["nope=1"], ["'nope'", "trainer"]),
        (["optim.scheduler_interval=hourly"], ["optim.scheduler_interval", "epoch, step"]),
        (["trainer.progress=fancy"], ["trainer.progress", "'fancy'", "auto, rich, plain, none"]),
        (["trainer.device=tpu"], ["trainer.device", "'tpu'", "auto, cpu, cuda"]),
        (["tracker=swanlab", "tracker.mode=online"], ["tracker.mode", "SwanLab mode", "cloud, local, offline"]),
        (["trainer.max_epochs=0"], ["trainer.max_epochs", ">= 1"]),
        (["+freq=nope"], ["'nope'", "lr_sweep"]),
        (["trainer.max_epochs=[1"], ["bad override"]),
        (["+optim.lrr=1e-3"], ["'optim.lrr'", "did you mean 'optim.lr'"]),
        (["freq=lr_sweep"], ["'+freq=lr_sweep'"]),
        (["optim.lr=nan"], ["optim.lr", "finite"]),
        (["seed=100000000000000000000000"], ["seed", "0..4294967295"]),
    ],
)
def test_bad_config_is_a_config_error_naming_the_key(compose, override, needles):
    with pytest.raises(ConfigError) as info:
        validate_config(compose(override))
    msg = info.value.one_line()
    for n in needles:
        assert n in msg, msg


def test_choices_are_plain_strings_in_the_written_config(compose):
    """Enum fields read and write as the strings a user typed (config.yaml, run ids)."""
    cfg = compose(["trainer.device=cpu", "optim.scheduler_interval=step"])
    text = OmegaConf.to_yaml(cfg)
    assert "device: cpu" in text and "scheduler_interval: step" in text and "!!" not in text
    assert cfg.trainer.device == "cpu" and f"{cfg.trainer.progress}" == "auto"


def _repeats(option, schema, prefix: str = "") -> list[str]:
    """The keys of ``option`` (a YAML option's own keys) whose value equals ``schema``'s default."""
    from omegaconf import DictConfig

    found = []
    for key, value in option.items():
        if key in ("defaults", "_target_") or key not in schema:
            continue
        default = schema._get_node(key)
        if isinstance(value, dict) and isinstance(default, DictConfig) and default._is_none() is False:
            found += _repeats(value, default, f"{prefix}{key}.")
        elif OmegaConf.to_container(OmegaConf.create({"v": value}))["v"] == OmegaConf.to_container(
                schema, enum_to_str=True).get(key):
            found.append(f"{prefix}{key}")
    return found


def test_options_list_only_what_differs_from_their_schema():
    """A group option that extends a schema sets only what differs from it (its `_target_` lines
    stay: they name what the option builds, and `expflow new` aims them at the project)."""
    import re

    from expflow.config.schema import SCHEMAS

    schemas = {(group, name): OmegaConf.structured(node) for group, name, node in SCHEMAS}
    checked, repeats = 0, {}
    for path in sorted(Path(CONF).glob("*/*.yaml")):
        text = path.read_text()
        m = re.search(r"^\s*- /schema/(\w+)@_here_: \"?(\w+)\"?", text, re.M)
        if not m:
            continue
        checked += 1
        option = OmegaConf.to_container(OmegaConf.load(path))
        if found := _repeats(option, schemas[(m[1], m[2])]):
            repeats[f"{path.parent.name}/{path.name}"] = found
    assert checked >= 15
    assert not repeats, f"options repeating their schema's defaults: {repeats}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needles",
    [
        (["trainer.max_epochs=abc"], ["trainer.max_epochs"]),
        (["model=nope"], ["cnn, mlp"]),
        (["trainer.nope=1"], ["trainer.nope"]),
        (["-m", "optim.lr=0.1,abc"], ["optim.lr", "Float"]),
        (["+optim.lrr=1e-3"], ["optim.lrr", "optim.lr"]),
    ],
)
def test_train_command_bad_input_is_one_line(tmp_path, args, needles):
    proc = run_cli(*args, f"paths.runs={tmp_path}", module="expflow.train", timeout=120)
    assert_one_line_error(proc, *needles)
    assert not any(Path(tmp_path).iterdir())  # nothing was created


@pytest.mark.slow
def test_train_outside_a_project_is_one_line(tmp_path):
    proc = run_cli(cwd=tmp_path, module="expflow.train", timeout=120)
    assert_one_line_error(proc, "conf/config.yaml")


def test_ruff_clean():
    """The style bar: ruff finds nothing in the project's Python."""
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency"
    proc = subprocess.run([ruff, "check", "src", "tests", "benchmarks"], cwd=CONF.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
