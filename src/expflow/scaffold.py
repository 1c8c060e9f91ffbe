"""``expflow new <dir> [--example digits|regression|command]``: a new project with expflow's own
layout that runs out of the box (``snakemake --cores 2``).

Generated from expflow's project files rather than from a second copy kept by hand: the
``Snakefile`` and ``workflows/`` as they are, ``conf/`` with the example's options pointing
at the project's own module, the example's model and dataset module from
:mod:`expflow.examples`, and the example's scripts from ``analysis/``. An example's ``freq/``
overlay (``regression``) becomes the new project's defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import keyword
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from expflow.errors import ExpflowError
from expflow.paths import check_writable, write_error, writing

EXAMPLES_PACKAGE = "expflow.examples"
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


class ScaffoldError(ExpflowError):
    """The project cannot be created as asked (or expflow's project files are missing)."""


@dataclass(frozen=True)
class Example:
    module: str  # the module of expflow.examples holding its model(s) and dataset
    freq: str | None  # a freq/ overlay whose settings become the project's defaults
    sweep: str  # the workflow's sweep line
    analyses: tuple[str, ...]  # the analyses the workflow runs on every package
    scripts: tuple[str, ...]  # project scripts copied from analysis/
    # A command project: this module of expflow.examples becomes the project's train.py,
    # run as runner=command with these arguments (no model or dataset options).
    script: str | None = None
    argv: str | None = None
    resume_argv: str | None = None


EXAMPLES = {
    "digits": Example("digits", None, "optim.lr=1e-3,3e-3 seed=range(2)",
                      ("accuracy", "learning_curves"), ("misclassified",)),
    "regression": Example("regression", "regression", "optim.lr=1e-2,3e-2 seed=range(2)",
                          ("learning_curves", "regression_fit"), ("regression_fit",)),
    "command": Example("command_train", None, "optim.lr=1e-2,3e-2 seed=range(2)", ("learning_curves",), (),
                       script="command_train", argv='[python, train.py, --lr, "${optim.lr}"]',
                       resume_argv='[--resume, "${expflow:checkpoint}"]'),
}


def source_root() -> Path:
    """expflow's own project (a checkout, or an editable install of one)."""
    root = Path(__file__).resolve().parents[2]
    if all((root / p).exists() for p in ("Snakefile", "workflows", "conf/config.yaml")):
        return root
    raise ScaffoldError(f"expflow's project files (Snakefile, workflows/, conf/) are not next to {root / 'src'}; "
                        "`expflow new` needs expflow installed from its repository (pip install -e <checkout>)")


def project_name(target: Path, name: str | None) -> str:
    """The project's Python package name: ``name``, or the directory's name made an identifier."""
    chosen = name or re.sub(r"\W+", "_", target.name.lower()).strip("_")
    if chosen and chosen[0].isdigit():
        chosen = f"project_{chosen}"
    if not chosen.isidentifier() or keyword.iskeyword(chosen):
        raise ScaffoldError(f"--name {chosen!r}: not a valid Python package name")
    if chosen == "expflow" or importlib.util.find_spec(chosen) is not None:
        raise ScaffoldError(f"--name {chosen!r}: an installed module has that name and would shadow the project's; "
                            "choose another with --name")
    return chosen


# -- editing YAML text (comments kept) ------------------------------------------------------
_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:-][^:#]*?):(?P<sp>\s*)(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _find_key(lines: list[str], path: Sequence[str], where: str) -> tuple[int, re.Match[str]]:
    start, end, parent = 0, len(lines), -1
    for key in path:
        for i in range(start, end):
            m = _KEY_LINE.match(lines[i].rstrip("\n"))
            if m and m["key"] == key and len(m["indent"]) > parent:
                break
        else:
            raise ScaffoldError(f"{where}: no key {'.'.join(path)} (expflow's project files changed?)")
        parent, start = len(m["indent"]), i + 1
        end = next((j for j in range(start, len(lines))
                    if lines[j].strip() and not lines[j].lstrip().startswith("#") and _indent(lines[j]) <= parent),
                   len(lines))
    return i, m


def yaml_value(text: str, path: Sequence[str], where: str) -> str:
    """The value of ``path`` as written in block-style YAML ``text``."""
    _, m = _find_key(text.splitlines(keepends=True), path, where)
    return m["value"]


def set_yaml_value(text: str, path: Sequence[str], value: str, where: str) -> str:
    """``text`` with the value of ``path`` replaced, its comment kept."""
    lines = text.splitlines(keepends=True)
    i, m = _find_key(lines, path, where)
    lines[i] = f"{m['indent']}{m['key']}: {value}{m['comment'] or ''}\n"
    return "".join(lines)


def set_default(text: str, group: str, option: str, where: str) -> str:
    """``text`` with the defaults-list entry ``- group: ...`` choosing ``option``."""
    pattern = re.compile(rf"^(\s*-\s*{re.escape(group)}:\s*)([^\s#]+)", re.M)
    if not pattern.search(text):
        raise ScaffoldError(f"{where}: no defaults entry for {group!r} (expflow's project files changed?)")
    return pattern.sub(lambda m: m.group(1) + option, text, count=1)


def set_list(text: str, key: str, items: Sequence[str], where: str) -> str:
    """``text`` with the block list under top-level ``key:`` replaced by ``items``."""
    pattern = re.compile(rf"^{re.escape(key)}:[^\n]*\n(?:[ \t]+-[^\n]*\n)+", re.M)
    if not pattern.search(text):
        raise ScaffoldError(f"{where}: no list {key!r} (expflow's project files changed?)")
    body = "".join(f'  - "{item}"\n' for item in items)
    return pattern.sub(lambda m: m.group(0).split("\n", 1)[0] + "\n" + body, text, count=1)


# -- the project ----------------------------------------------------------------------------
def _leaves(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _leaves(v, (*prefix, str(k)))]
    return [prefix]


def _example_options(conf: Path, group: str, module: str) -> list[Path]:
    """The options of ``group`` whose target is in the example's module."""
    prefix = f"{EXAMPLES_PACKAGE}.{module}."
    return [p for p in sorted((conf / group).glob("*.yaml")) if f"_target_: {prefix}" in p.read_text()]


def _switches_example(path: Path) -> bool:
    """A freq overlay that swaps the model or dataset belongs to one example."""
    import yaml

    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults") or []
    return any(isinstance(d, dict) and any(k.startswith("override /model") or k.startswith("override /dataset")
                                           for k in d) for d in defaults)


def write_conf(src: Path, dest: Path, example: Example, name: str) -> None:
    """The project's conf/: the example's model and dataset options aimed at the project's
    module, the other examples' options left out, and the example's overlay folded in."""
    import yaml

    shutil.copytree(src, dest, ignore=SKIP)
    for option in (dest / "runner").glob("*.yaml"):  # runners of other examples
        if f"_target_: {EXAMPLES_PACKAGE}." in option.read_text():
            option.unlink()
    if example.script:
        write_command_conf(dest, example)
        return
    for group in ("model", "dataset"):
        keep = {p.name for p in _example_options(src, group, example.module)}
        if not keep:
            raise ScaffoldError(f"{src / group}: no option targets {EXAMPLES_PACKAGE}.{example.module}")
        for option in (dest / group).glob("*.yaml"):
            if option.name not in keep:
                option.unlink()
            else:
                option.write_text(option.read_text().replace(f"{EXAMPLES_PACKAGE}.{example.module}.",
                                                              f"{name}.{example.module}."))
    config_path = dest / "config.yaml"
    config = config_path.read_text()
    if example.freq:
        freq_path = src / "freq" / f"{example.freq}.yaml"
        freq_text = freq_path.read_text()
        freq = yaml.safe_load(freq_text) or {}
        for entry in freq.get("defaults") or []:
            for key, option in (entry.items() if isinstance(entry, dict) else []):
                if key.startswith("override /"):
                    config = set_default(config, key.removeprefix("override /"), str(option), str(config_path))
        for path in _leaves({k: v for k, v in freq.items() if k != "defaults"}):
            value = yaml_value(freq_text, path, str(freq_path))
            group_dir = dest / path[0]
            if group_dir.is_dir():  # a group's setting: into the option the project uses
                chosen = yaml.safe_load(config)["defaults"]
                option = next(d[path[0]] for d in chosen if isinstance(d, dict) and path[0] in d)
                target = group_dir / f"{option}.yaml"
                target.write_text(set_yaml_value(target.read_text(), path[1:], value, str(target)))
            else:
                config = set_yaml_value(config, path, value, str(config_path))
    config_path.write_text(config)
    _finish_conf(dest, example)


def _finish_conf(dest: Path, example: Example) -> None:
    """Drop the overlays that swap in another example; the workflow runs this example's sweep."""
    for overlay in (dest / "freq").glob("*.yaml"):
        if _switches_example(overlay):
            overlay.unlink()
    workflow_path = dest / "workflow.yaml"
    workflow = set_list(workflow_path.read_text(), "sweep", [example.sweep], str(workflow_path))
    workflow = set_yaml_value(workflow, ["analyze", "scripts"], "[" + ", ".join(example.analyses) + "]",
                              str(workflow_path))
    workflow_path.write_text(workflow)


def write_command_conf(dest: Path, example: Example) -> None:
    """A command project's conf/: ``runner: command`` with the script's argv, no model or dataset."""
    for group in ("model", "dataset"):
        shutil.rmtree(dest / group)
    config_path = dest / "config.yaml"
    lines = [ln for ln in config_path.read_text().splitlines(keepends=True)
             if not re.match(r"^\s*- (model|dataset):", ln)]
    config = set_default("".join(lines), "runner", "command", str(config_path))
    config_path.write_text(config)
    runner_path = dest / "runner" / "command.yaml"
    text = set_yaml_value(runner_path.read_text(), ["argv"], str(example.argv), str(runner_path))
    runner_path.write_text(set_yaml_value(text, ["resume_argv"], str(example.resume_argv), str(runner_path)))
    _finish_conf(dest, example)


def create_project(target: str | Path, example: str = "digits", name: str | None = None) -> Path:
    """Write a new project into ``target`` (which must not exist or be empty)."""
    if example not in EXAMPLES:
        raise ScaffoldError(f"--example {example}: unknown; valid: {', '.join(EXAMPLES)}")
    spec = EXAMPLES[example]
    target = Path(target)
    with writing(target):
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise ScaffoldError(f"{target}: exists and is not an empty directory")
    name = project_name(target.resolve(), name)
    root = source_root()
    # The project is built next to the target and renamed into place: its parent must take files.
    check_writable(target.parent if target.exists() else target)
    staging = target.parent / f".{target.name}.new"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        shutil.copy2(root / "Snakefile", staging / "Snakefile")
        shutil.copytree(root / "workflows", staging / "workflows", ignore=SKIP)
        write_conf(root / "conf", staging / "conf", spec, name)
        package = staging / "src" / name
        package.mkdir(parents=True)
        example_file = root / "src" / "expflow" / "examples" / f"{spec.module}.py"
        if spec.script:  # a plain script at the project's root, run as runner=command
            shutil.copy2(example_file, staging / "train.py")
        else:
            shutil.copy2(example_file, package / f"{spec.module}.py")
        (package / "__init__.py").write_text(f'"""{name}: an expflow project ({example} example)."""\n')
        (staging / "analysis").mkdir()
        for script in spec.scripts:
            shutil.copy2(root / "analysis" / f"{script}.py", staging / "analysis" / f"{script}.py")
        (staging / "pyproject.toml").write_text(PYPROJECT.format(name=name, example=example))
        (staging / ".gitignore").write_text(GITIGNORE)
        readme = COMMAND_README if spec.script else README
        (staging / "README.md").write_text(readme.format(name=name, example=example, module=spec.module,
                                                         analyses=", ".join(spec.analyses)))
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk, a read-only place: one line naming the path
            error = write_error(e, staging)
            if staging.absolute() in error.path.absolute().parents:
                error.path = target  # a file of the staging directory, now gone: the project failed
            raise error from None
        raise
    return target


PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "An expflow project ({example} example)"
requires-python = ">=3.11"
dependencies = ["expflow"]

[tool.setuptools.packages.find]
where = ["src"]
"""

GITIGNORE = """\
__pycache__/
/runs/
/.snakemake/
"""

README = """\
# {name}

An expflow project, made by `expflow new --example {example}`.

```bash
snakemake --cores 2          # the sweep in conf/workflow.yaml: package, train, analyze, report
expflow status               # the runs, as they are now
expflow show runs/<run_id>   # one run; for a crashed one, its error
open runs/report.html        # every run's curves and the sweep in one page
```

- `conf/`: the Hydra configs (`config.yaml` is the defaults list); `conf/workflow.yaml` names the
  runs of the workflow, in Hydra's sweep syntax.
- `src/{name}/{module}.py`: the model and the dataset. Packages snapshot `src/`, so a run keeps the
  code it was trained with.
- `analysis/`: analysis scripts (`def analyze(ctx)`), run with `expflow analyze runs/<run_id> <script>`;
  the workflow runs {analyses} on every package.

To train outside the workflow (`python -m expflow.train`), install the project first:
`pip install -e .`.
"""

COMMAND_README = """\
# {name}

An expflow project, made by `expflow new --example {example}`: the training is a plain script,
`train.py`, which expflow runs as `runner=command` (see `conf/runner/command.yaml`).

```bash
snakemake --cores 2          # the sweep in conf/workflow.yaml: package, train, analyze, report
expflow status               # the runs, as they are now
expflow continue runs/<id>   # resume a crashed run from its last checkpoint (runner.resume_argv)
expflow rerun runs/<id>      # rerun it from its code snapshot and compare the records
```

- `train.py`: runs from each package's code snapshot with `EXPFLOW_CHECKPOINT_DIR`, `EXPFLOW_SEED`
  and the GPU lease in its environment; `expflow.log(metrics, step)` records metrics (a no-op when
  the script runs alone). Python, NumPy and torch are seeded before it starts.
- `conf/`: `runner.argv` interpolates the config (`${{optim.lr}}`); `conf/workflow.yaml` names the runs.
- The workflow runs {analyses} on every package.

To train outside the workflow (`python -m expflow.train`), install the project first:
`pip install -e .`.
"""


# -- the command ----------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    p = subparsers.add_parser("new", help="create a new project (Snakefile, workflows/, conf/, src/, analysis/)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", help="the new project's directory (must not exist, or be empty)")
    p.add_argument("--example", default="digits", choices=sorted(EXAMPLES), help="the example it starts from")
    p.add_argument("--name", default=None, help="the Python package name (default: from the directory's name)")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    path = create_project(args.dir, args.example, args.name)
    print(f"{path}: new expflow project ({args.example} example)")
    print(f"  cd {path} && snakemake --cores 2")
    return 0
