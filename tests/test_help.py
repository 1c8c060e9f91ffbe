"""What users read: every `--help` is written for people (a description, what the command
reads and writes, examples; no reStructuredText), and `expflow show` says in words what each
entry is, at the terminal's width."""

from __future__ import annotations

import json
import re

import pytest

from expflow.cli import build_parser

from .conftest import run_cli
from .test_status import curve, fake_package

# ``literal``, :mod:`x`, :func:`x`, .. note::, `text`_ links: markup of a docstring, not help.
RST = re.compile(r"``|:(mod|func|class|meth|attr|data|obj|ref|doc|exc|py:\w+):`|^\s*\.\. \w+::|`_\b", re.M)


def subcommands() -> dict:
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.choices and a.dest == "command"]
    return dict(sub.choices)


def check_help(text: str, what: str) -> None:
    assert not RST.search(text), f"{what}: reStructuredText in the help: {RST.search(text).group(0)!r}\n{text}"
    assert "Examples:" in text, f"{what}: no example\n{text}"
    assert re.search(r"\bReads\b", text) and re.search(r"\bwrites?\b", text, re.I), f"{what}: reads/writes\n{text}"


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_help_is_written_for_users(name):
    parser = subcommands()[name]
    assert parser.description and parser.description.split("\n")[0].strip(), f"{name}: no description"
    summary = parser.description.split("\n")[0]
    assert len(summary) <= 110 and summary.endswith("."), f"{name}: the first line is one sentence: {summary!r}"
    text = parser.format_help()
    check_help(text, f"expflow {name} --help")
    examples = text.split("Examples:", 1)[1]
    assert re.search(rf"^\s+expflow {re.escape(name)}\b", examples, re.M), f"{name}: no example of the command itself"


def test_the_real_command_line_help():
    top = run_cli("--help", env={"COLUMNS": "100"})
    assert top.returncode == 0 and not RST.search(top.stdout), top.stdout
    assert "Examples:" in top.stdout and all(name in top.stdout for name in subcommands())
    for name in ("show", "continue", "run", "rerun", "analyze", "status", "report", "new"):
        proc = run_cli(name, "--help", env={"COLUMNS": "100"})
        assert proc.returncode == 0, proc.stderr
        check_help(proc.stdout, f"expflow {name} --help")
        # the description is the paragraph after the usage block: not empty
        description = proc.stdout.split("\n\n")[1].strip()
        assert description and not description.startswith(("positional arguments", "options")), proc.stdout


@pytest.mark.parametrize("module", ["expflow.rerun", "expflow.analyze"])
def test_the_python_m_forms_say_what_their_command_says(module):
    proc = run_cli("--help", module=module, env={"COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    check_help(proc.stdout, f"python -m {module} --help")


def test_train_help_lists_only_the_groups_a_user_chooses():
    proc = run_cli("--help", module="expflow.train", env={"COLUMNS": "100"})
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert not RST.search(text), text
    assert text.startswith("python -m expflow.train: train one run"), text[:200]
    assert "Reads" in text and "Writes" in text and "Examples:" in text
    groups = text.split("== Config groups", 1)[1].split("Examples:", 1)[0]
    for group in ("model=", "dataset=", "optim=", "trainer=", "tracker=", "gpu=", "runner=", "+freq="):
        assert group in groups, group
    for internal in ("align", "schema", "hydra/"):
        assert internal not in groups, f"{internal} listed:\n{groups}"
    assert "powered by Hydra" not in text


def test_show_says_in_words_what_each_entry_is(tmp_path):
    runs = tmp_path / "runs"
    pkg = fake_package(runs, "a1", points=curve(0.5))
    folder = pkg.analysis_dir / "learning_curves"
    folder.mkdir(parents=True)
    (folder / "analysis.json").write_text(json.dumps({"script": "learning_curves", "files": [],
                                                      "time": "2026-01-01T00:00:00"}))
    wide = run_cli("show", str(pkg.path), env={"COLUMNS": "160"})
    assert wide.returncode == 0, wide.stderr
    line = next(x for x in wide.stdout.splitlines() if "learning_curves" in x)
    assert "- ->" not in line and "(...)" not in line, line
    assert "results: none" in line and "files: none" in line and "no checkpoint" in line, line
    assert "checkpoints: none saved yet" in wide.stdout and "not started" in wide.stdout
    assert max(map(len, wide.stdout.splitlines())) > 80  # the width it was given, not 80 columns
    narrow = run_cli("show", str(pkg.path), env={"COLUMNS": "60"})
    assert narrow.returncode == 0 and max(map(len, narrow.stdout.splitlines())) <= 60, narrow.stdout
