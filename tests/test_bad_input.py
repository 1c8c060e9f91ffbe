"""Bad input is one line naming the key or option and what is valid, a non-zero exit, no
traceback, and nothing written: numbers (nan, infinities, out of range), keys a schema
lacks (also with '+'), credentials in the config, credentials in the code snapshot."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from expflow.config import compose_config, validate_config
from expflow.config.credentials import carries_value, credential_name
from expflow.config.numbers import int_option, number_option
from expflow.errors import ConfigError, PackageError
from expflow.package import codestore
from expflow.package.codestore import CodeStore, check_sources, collect_files

from .conftest import CONF, assert_one_line_error, run_cli, small_overrides

SECRET = "sk-" + "do-not-print-" + "0123456789"  # built at runtime: never a literal key in the repo


def config_error(overrides, config_dir=CONF) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(compose_config(list(overrides), config_dir=config_dir), list(overrides))
    msg = info.value.one_line()
    assert "\n" not in str(info.value).strip()
    return msg


def accepted(overrides, config_dir=CONF):
    cfg = compose_config(list(overrides), config_dir=config_dir)
    validate_config(cfg, list(overrides))
    return cfg


@pytest.fixture
def user_conf(tmp_path) -> Path:
    """The repo's conf/ plus a model option without a schema (its kwargs are the user's)."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "model" / "linear.yaml").write_text("_target_: torch.nn.Linear\nin_features: 64\nout_features: 10\n")
    return conf


# -- numbers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, needles",
    [
        ("seed=100000000000000000000000", ["seed", "0..4294967295"]),
        ("seed=-1", ["seed", "0..4294967295"]),
        ("seed=4294967296", ["seed", "0..4294967295"]),
        ("dataset.split_seed=5000000000", ["dataset.split_seed", "0..4294967295"]),
        ("optim.lr=nan", ["optim.lr", "not a finite number", ">= 0"]),
        ("optim.lr=inf", ["optim.lr", "not a finite number"]),
        ("optim.lr=-inf", ["optim.lr", "not a finite number"]),
        ("optim.lr=1e400", ["optim.lr", "not a finite number"]),  # beyond float64: inf
        ("optim.lr=1" + "0" * 400, ["optim.lr", "out of range", "finite float"]),  # int too large for a float
        ("optim.lr=-0.1", ["optim.lr", ">= 0"]),
        ("optim.weight_decay=nan", ["optim.weight_decay", "finite"]),
        ("model.dropout=nan", ["model.dropout", "finite"]),
        ("trainer.heartbeat_s=inf", ["trainer.heartbeat_s", "> 0"]),
        ("trainer.heartbeat_s=0", ["trainer.heartbeat_s", "> 0"]),
        ("trainer.grad_clip=nan", ["trainer.grad_clip", "finite"]),
        ("trainer.grad_clip=-1", ["trainer.grad_clip", ">= 0"]),
        ("trainer.max_epochs=100000000000000000000000", ["trainer.max_epochs", "int64"]),
        ("trainer.max_epochs=0", ["trainer.max_epochs", ">= 1"]),
        ("trainer.threads=-2", ["trainer.threads", ">= 0"]),
        ("gpu.mem_mb=-1", ["gpu.mem_mb", ">= 0"]),
        ("checkpoint.persistent_keep=-1", ["checkpoint.persistent_keep", ">= 0"]),
        # open nodes (no schema) get the general checks too
        ("lifecycle.validate_every=100000000000000000000000", ["lifecycle.validate_every", "int64"]),
        ("+lifecycle.threshold=nan", ["lifecycle.threshold", "finite"]),
        ("+optim.optimizer.eps=-inf", ["optim.optimizer.eps", "finite"]),
        ("+optim.optimizer.betas=[0.9,inf]", ["optim.optimizer.betas[1]", "finite"]),
        ("+lifecycle.my_seed=-5", ["lifecycle.my_seed", "0..4294967295"]),
    ],
)
def test_numbers_out_of_range_are_one_line(override, needles):
    msg = config_error([override])
    for n in needles:
        assert n in msg, msg
    assert len(msg) < 400, msg  # a huge number is shortened


def test_numbers_in_range_pass():
    cfg = accepted(["seed=4294967295", "optim.lr=0", "trainer.grad_clip=1.5", "+optim.optimizer.eps=1e-300",
                    "lifecycle.validate_every=9223372036854775807"])
    assert cfg.seed == 2**32 - 1


def test_interpolated_numbers_are_checked_resolved():
    msg = config_error(["gpu.mem_mb=0", "trainer.heartbeat_s=${gpu.mem_mb}"])  # fine for mem_mb, not here
    assert msg.startswith("trainer.heartbeat_s: 0.0 is out of range") and "a number > 0" in msg, msg


def test_a_sweep_checks_each_value():
    from expflow.config.argv import check_argv

    with pytest.raises(ConfigError, match="seed: 100000000000000000000000 is out of range"):
        check_argv(["-m", "seed=1,100000000000000000000000", f"--config-dir={CONF}"])
    with pytest.raises(ConfigError, match="bad override"):
        check_argv(["-m", "optim.lr=[1", f"--config-dir={CONF}"])


# -- keys a schema lacks, with '+' too ----------------------------------------------
@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["+optim.lrr=1e-3"], ["unknown key 'optim.lrr'", "'+optim.lrr=1e-3'", "did you mean 'optim.lr'", "weight_decay"]),
        (["++optim.lrr=1e-3"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
        (["+trainer.max_epoch=3"], ["unknown key 'trainer.max_epoch'", "did you mean 'trainer.max_epochs'"]),
        (["+nope=1"], ["unknown key 'nope'", "trainer"]),
        (["+model.widht=3"], ["unknown key 'model.widht'", "hidden"]),  # the shipped models have schemas
        (["+gpu.cont=2"], ["unknown key 'gpu.cont'", "did you mean 'gpu.count'"]),
        (["tracker=swanlab", "+tracker.projet=x"], ["unknown key 'tracker.projet'", "did you mean 'tracker.project'"]),
        (["tracker=multi", "+tracker.trackers.swanlab.mod=cloud"], ["tracker.trackers.swanlab.mod", "mode"]),
    ],
)
def test_plus_cannot_add_a_key_a_schema_lacks(overrides, needles):
    msg = config_error(overrides)
    for n in needles:
        assert n in msg, msg


def test_plus_adds_keys_to_open_nodes(user_conf):
    cfg = accepted(["+lifecycle.extra=1", "+optim.optimizer.betas=[0.9,0.99]", "+optim.scheduler.eta_min=0.0"])
    assert cfg.lifecycle.extra == 1 and list(cfg.optim.optimizer.betas) == [0.9, 0.99]
    cfg = accepted(["model=linear", "+model.bias=false"], config_dir=user_conf)  # a user model's kwargs
    assert cfg.model.bias is False
    cfg = accepted(["tracker=multi", "+tracker.trackers.extra._target_=expflow.tracking.NullTracker"])
    assert "extra" in cfg.tracker.trackers


def test_adding_a_config_group_keeps_working():
    assert accepted(["+freq=lr_sweep"]).optim.lr == 3e-3
    assert accepted(["+freq=smoke"]).trainer.max_epochs >= 1


@pytest.mark.parametrize(
    "overrides, needles",
    [
        (["freq=lr_sweep"], ["'freq'", "write '+freq=lr_sweep'", "smoke"]),
        (["freq=smoke"], ["write '+freq=smoke'"]),
        (["+seed=3"], ["'seed' is already in the config", "'seed=3'"]),
    ],
)
def test_group_and_plus_hints(overrides, needles):
    msg = config_error(overrides)
    for n in needles:
        assert n in msg, msg


# -- credentials in the config ------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["api_key", "apiKey", "APIKey", "api-key", "apikey", "token", "hf_token", "auth_token", "accessToken",
     "session_token", "secret", "client_secret", "password", "db_password", "passwd", "passphrase",
     "access_key", "secret_key", "private_key", "AWS_SECRET_ACCESS_KEY", "swanlab_api_key", "credentials"],
)
def test_credential_names(name):
    assert credential_name(name)


@pytest.mark.parametrize(
    "name",
    ["max_tokens", "tokenizer", "num_tokens", "tokens", "token_budget", "max_token", "pad_token", "eos_token",
     "eos_token_id", "api_key_file", "token_path", "secrets_dir", "secrets", "password_file", "key", "monkey",
     "keyboard", "api_host", "hold_best", "turkey"],
)
def test_ordinary_names(name):
    assert not credential_name(name)


def test_what_carries_a_value():
    assert carries_value("x") and carries_value(0) and carries_value({"a": "x"}) and carries_value("${oc.env:X}")
    assert not carries_value(None) and not carries_value("") and not carries_value(True)
    assert not carries_value("???") and not carries_value({}) and not carries_value({"a": None})
    assert not carries_value("${oc.env:X}", interpolations=False)


@pytest.mark.parametrize(
    "overrides, key",
    [
        ([f"+api_key={SECRET}"], "api_key"),
        ([f"+model.token={SECRET}"], "model.token"),
        ([f"+lifecycle.api_key={SECRET}"], "lifecycle.api_key"),
        ([f"+lifecycle.db.password={SECRET}"], "lifecycle.db.password"),
        ([f"+optim.optimizer.hf_token={SECRET}"], "optim.optimizer.hf_token"),
        (["+lifecycle.api_key=${oc.env:HOME}"], "lifecycle.api_key"),  # it would resolve into the package
        (["tracker=swanlab", f"+tracker.api_key={SECRET}"], "tracker.api_key"),
        (["tracker=multi", f"+tracker.trackers.swanlab.token={SECRET}"], "tracker.trackers.swanlab.token"),
    ],
)
def test_a_credential_anywhere_in_the_config_is_refused(overrides, key):
    msg = config_error(overrides)
    assert msg.startswith(f"{key}: credentials are never config values"), msg
    assert SECRET not in msg


def test_a_credential_in_hydra_overrides_is_refused():
    from expflow.config.argv import check_argv

    for argv in ([f"+hydra.job.env_set.HF_TOKEN={SECRET}"], ["-m", f"hydra.job.env_set.HF_TOKEN={SECRET}", "seed=1,2"]):
        with pytest.raises(ConfigError, match=r"^hydra.job.env_set.HF_TOKEN: credentials") as info:
            check_argv([*argv, f"--config-dir={CONF}"])
        assert SECRET not in str(info.value)
    check_argv(["+hydra.job.env_set.MAX_TOKENS=5", "+lifecycle.token=null", f"--config-dir={CONF}"])


def test_a_user_model_credential_is_refused(user_conf):
    msg = config_error(["model=linear", f"+model.token={SECRET}"], config_dir=user_conf)
    assert msg.startswith("model.token: credentials") and SECRET not in msg


def test_ordinary_token_keys_and_empty_credentials_pass():
    accepted(["+lifecycle.max_tokens=512", "+lifecycle.tokenizer=gpt2", "+lifecycle.num_tokens=3",
              "+lifecycle.pad_token='<pad>'", "+lifecycle.token=null", "+lifecycle.use_credentials=true",
              "+lifecycle.api_key_file=secrets/key"])


# -- credentials in the code snapshot -----------------------------------------------
def project(root: Path) -> Path:
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "m.py").write_text("TOKEN_ENV = 'HF_TOKEN'\n")
    (root / "conf").mkdir()
    (root / "conf" / "config.yaml").write_text("a: 1\nmax_tokens: 5\ntoken: null\napi_key: ${oc.env:KEY}\n")
    return root


def test_secrets_and_env_files_are_never_taken(tmp_path, monkeypatch):
    root = project(tmp_path / "proj")
    for rel in ("secrets/swanlab_api_key", "secrets/config.yaml", "conf/secrets/x.yaml", ".env", ".env.local",
                "conf/.env", "conf/.env.prod"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"api_key: {SECRET}\n")
    elsewhere = root / "keys"
    elsewhere.mkdir()
    (elsewhere / "swanlab_api_key").write_text(SECRET)
    monkeypatch.setenv("EXPFLOW_SECRETS_DIR", str(elsewhere))
    taken = [p.relative_to(root).as_posix() for p in collect_files(root, ["**/*", ".*", "**/.*"], [])]
    assert taken == ["conf/config.yaml", "src/pkg/m.py"]
    entries = CodeStore(tmp_path / "store").snapshot(root, tmp_path / "pkg" / "code", ["**/*", "**/.*"], [])
    assert sorted(e.path for e in entries) == ["conf/config.yaml", "src/pkg/m.py"]


@pytest.mark.parametrize(
    "name, text, key",
    [
        ("conf/tracker/mine.yaml", f"project: x\napi_key: {SECRET}\n", "api_key"),
        ("conf/model/hf.yml", f"model:\n  hf_token: {SECRET}\n", "model.hf_token"),
        ("conf/two.yaml", f"a: 1\n---\npassword: {SECRET}\n", "password"),
        ("settings.json", f'{{"auth": {{"swanlab_api_key": "{SECRET}"}}}}', "auth.swanlab_api_key"),
        ("pyproject.toml", f'[tool.x]\ntoken = "{SECRET}"\n', "tool.x.token"),
        ("setup.cfg", f"[upload]\npassword = {SECRET}\n", "upload.password"),
        ("tox.ini", f"[s]\nclient_secret = {SECRET}\n", "s.client_secret"),
        ("conf/broken.yaml", f"token: {SECRET}\n  : [\n", "token"),  # unparseable: read line by line
    ],
)
def test_a_config_file_with_a_credential_refuses_the_snapshot(tmp_path, name, text, key):
    root = project(tmp_path / "proj")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
    store, target = tmp_path / "store", tmp_path / "pkg" / "code"
    include = ["**/*.py", "**/*.yaml", "**/*.yml", "*.json", "*.toml", "*.cfg", "*.ini"]
    with pytest.raises(PackageError) as info:
        CodeStore(store).snapshot(root, target, include, [])
    msg = info.value.one_line()
    assert msg.startswith(f"code snapshot: {name} has a credential in key {key!r}"), msg
    assert "code.exclude" in msg and SECRET not in msg
    assert not store.exists() and not target.exists()  # nothing stored, nothing linked
    CodeStore(store).snapshot(root, target, include, [name])  # leaving the file out is the way round


def test_empty_or_referenced_credentials_do_not_refuse(tmp_path):
    root = project(tmp_path / "proj")
    (root / "conf" / "t.yaml").write_text("api_key: ''\npassword: ~\nsecret: ???\ntoken: ${oc.env:HF_TOKEN}\n")
    (root / "settings.json").write_text('{"token": null, "max_tokens": 5, "tokenizer": "gpt2"}')
    entries = CodeStore(tmp_path / "store").snapshot(root, tmp_path / "pkg", ["**/*.yaml", "*.json", "**/*.py"], [])
    assert len(entries) == 4


def test_config_files_are_parsed_only_when_needed_and_once_per_content(tmp_path, monkeypatch):
    root = project(tmp_path / "proj")
    for i in range(20):
        (root / "conf" / f"plain{i}.yaml").write_text(f"lr: {i}\n")  # no credential-like word: never parsed
    parsed = []
    real = codestore._scan_config
    monkeypatch.setattr(codestore, "_verdicts", {})
    monkeypatch.setattr(codestore, "_scan_config", lambda data, suffix: parsed.append(data) or real(data, suffix))
    store = CodeStore(tmp_path / "store")
    for i in range(5):
        store.snapshot(root, tmp_path / f"pkg{i}", ["**/*.yaml", "**/*.py"], [])
    assert len(parsed) == 1  # conf/config.yaml (it says token), once for five snapshots
    check_sources(root, ["**/*.yaml"], [])
    assert len(parsed) == 1


def test_validation_refuses_a_credential_file_before_any_package(tmp_path):
    root = project(tmp_path / "proj")
    (root / "conf" / "mine.yaml").write_text(f"token: {SECRET}\n")
    with pytest.raises(PackageError, match="conf/mine.yaml has a credential in key 'token'"):
        validate_config(compose_config([f"code.root={root}", f"paths.runs={tmp_path / 'runs'}"], config_dir=CONF))
    assert not (tmp_path / "runs").exists()


# -- numeric command-line options ---------------------------------------------------
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400", "0", "-1", "abc", ""])
def test_number_option_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError):
        number_option(0)(text)


@pytest.mark.parametrize("text", ["-1", "1.5", "nan", "1e3", "99999999999999999999999", "9" * 5000])
def test_int_option_rejects(text):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        int_option(0)(text)
    assert len(str(info.value)) < 200


def test_options_accept_valid_numbers():
    assert number_option(0)("0.5") == 0.5 and int_option(0)("0") == 0 and int_option(0)(str(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["sync", "runs/x", "--target", "mlflow", "--timeout", "nan"], ["--timeout", "'nan'", "finite", "> 0"]),
        (["sync", "runs/x", "--target", "mlflow", "--timeout", "-5"], ["--timeout", "> 0"]),
        (["status", "--interval", "inf"], ["--interval", "finite"]),
        (["status", "--interval", "0"], ["--interval", "> 0"]),
        (["continue", "runs/x", "--checkpoint", "-1"], ["--checkpoint", ">= 0"]),
        (["continue", "runs/x", "--checkpoint", "99999999999999999999999"], ["--checkpoint", "int64"]),
        (["analyze", "runs/x", "s", "--checkpoint", "nan"], ["--checkpoint", "not an integer"]),
        (["analyze", "runs/x", "s", "--gpus", "-1"], ["--gpus", ">= 0"]),
    ],
)
def test_numeric_cli_options_are_one_line(capsys, argv, needles):
    from expflow.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_analysis_worker_checkpoint_is_checked(capsys):
    from expflow.analysis.runner import worker_main

    with pytest.raises(SystemExit):
        worker_main(["runs/x", "--name", "n", "--module", "m", "--checkpoint", "nan"])
    assert "--checkpoint" in capsys.readouterr().err


# -- end to end: one line, non-zero exit, nothing written ---------------------------
@pytest.mark.slow
def test_sync_timeout_nan_is_one_line(tmp_path):
    proc = run_cli("sync", str(tmp_path / "pkg"), "--target", "mlflow", "--timeout", "nan", cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, "--timeout", "finite")
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, needles",
    [
        (["seed=100000000000000000000000"], ["seed", "0..4294967295"]),
        (["optim.lr=nan"], ["optim.lr", "finite"]),
        (["+optim.lrr=1e-3"], ["unknown key 'optim.lrr'", "did you mean 'optim.lr'"]),
        (["freq=lr_sweep"], ["+freq=lr_sweep"]),
        ([f"+api_key={SECRET}"], ["api_key: credentials are never config values"]),
        ([f"+model.token={SECRET}"], ["model.token: credentials"]),
        ([f"+hydra.job.env_set.WANDB_API_KEY={SECRET}"], ["hydra.job.env_set.WANDB_API_KEY: credentials"]),
        (["-m", "seed=1,100000000000000000000000"], ["seed", "out of range"]),
        (["-m", "+optim.lrr=1,2"], ["unknown key 'optim.lrr'"]),
    ],
)
def test_train_bad_input_writes_nothing(tmp_path, args, needles):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, *args), module="expflow.train", timeout=180)
    assert_one_line_error(proc, *needles)
    assert SECRET not in proc.stdout + proc.stderr
    assert not runs.exists()


@pytest.mark.slow
def test_train_refuses_a_snapshot_with_a_credential_file(tmp_path):
    root = project(tmp_path / "proj")
    (root / "conf" / "mine.yaml").write_text(f"api_key: {SECRET}\n")
    runs = tmp_path / "runs"
    overrides = [o for o in small_overrides(runs, "+freq=smoke") if not o.startswith("code.root=")]
    proc = run_cli(*overrides, f"code.root={root}", module="expflow.train", timeout=180)
    assert_one_line_error(proc, "conf/mine.yaml", "'api_key'", "code.exclude")
    assert SECRET not in proc.stdout + proc.stderr
    assert not runs.exists()
    proc = run_cli("materialize", "--runs", str(runs), "trainer=debug", f"code.root={root}", timeout=180)
    assert_one_line_error(proc, "conf/mine.yaml")
    assert not runs.exists()


@pytest.mark.slow
def test_open_nodes_still_train(tmp_path):
    runs = tmp_path / "runs"
    proc = run_cli(*small_overrides(runs, "+freq=smoke", "+optim.optimizer.betas=[0.8,0.99]"),
                   module="expflow.train", timeout=300)
    assert proc.returncode == 0, proc.stderr
    (pkg,) = [p for p in runs.iterdir() if not p.name.startswith(".")]
    assert "betas" in (pkg / "config.yaml").read_text()
