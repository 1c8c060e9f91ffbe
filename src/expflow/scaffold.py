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
    stop_signal: str | None = None  # the signal the script checkpoints and exits on


EXAMPLES = {
    "digits": Example("digits", None, "optim.lr=1e-3,3e-3 seed=range(2)",
                      ("accuracy", "learning_curves"), ("misclassified",)),
    "regression": Example("regression", "regression", "optim.lr=1e-2,3e-2 seed=range(2)",
                          ("learning_curves", "regression_fit"), ("regression_fit",)),
    "command": Example("command_train", None, "optim.lr=1e-2,3e-2 seed=range(2)", ("learning_curves",), (),
                       script="command_train", argv='[python, train.py, --lr, "${optim.lr}"]',
                       resume_argv='[--resume, "${expflow:checkpoint}"]', stop_signal="SIGUSR1"),
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


# -- editing the shipped YAML (a round-trip YAML library: comments, quotes and layout kept) ----
def _yaml() -> Any:
    from ruamel.yaml import YAML  # here: only `expflow new` writes YAML this way

    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)  # expflow's conf/ style: "key:\n  - item"
    yaml.width = 4096  # never re-wrap a line
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return yaml


def load_yaml(path: Path) -> Any:
    """The YAML document in ``path``, for editing (``{}`` for an empty file)."""
    from ruamel.yaml.error import YAMLError

    try:
        doc = _yaml().load(path.read_text())
    except YAMLError as e:
        raise ScaffoldError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return {} if doc is None else doc


def dump_yaml(doc: Any, path: Path) -> None:
    import io

    out = io.StringIO()
    _yaml().dump(doc, out)
    path.write_text(out.getvalue())


def parse_yaml(text: str) -> Any:
    """A YAML value written as text (e.g. a flow list ``[python, train.py]``), as a node."""
    return _yaml().load(text)


def yaml_node(doc: Any, path: Sequence[str], where: str) -> Any:
    """The value at ``path`` in ``doc``."""
    node = doc
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise ScaffoldError(f"{where}: no key {'.'.join(path[:i + 1])} (expflow's project files changed?)")
        node = node[key]
    return node


def set_node(doc: Any, path: Sequence[str], value: Any, where: str) -> None:
    """Set ``path`` in ``doc`` to ``value``; absent mappings on the way are added."""
    from ruamel.yaml.comments import CommentedMap

    node = doc
    for i, key in enumerate(path[:-1]):
        if key not in node or node[key] is None:
            node[key] = CommentedMap()
        node = node[key]
        if not isinstance(node, dict):
            raise ScaffoldError(f"{where}: {'.'.join(path[:i + 1])} is not a mapping (expflow's project files changed?)")
    added = path[-1] not in node
    node[path[-1]] = value  # a key's comment belongs to its mapping: kept
    if added and node is doc and list(node)[-2:-1] == ["defaults"]:
        node.yaml_set_comment_before_after_key(path[-1], before="\n")  # a blank line after the defaults list


def _defaults(doc: Any, where: str) -> Any:
    entries = doc.get("defaults") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ScaffoldError(f"{where}: no defaults list (expflow's project files changed?)")
    return entries


def set_default(doc: Any, group: str, option: str, where: str) -> None:
    """The defaults-list entry ``- group: ...`` chooses ``option``."""
    for entry in _defaults(doc, where):
        if isinstance(entry, dict) and group in entry:
            entry[group] = option
            return
    raise ScaffoldError(f"{where}: no defaults entry for {group!r} (expflow's project files changed?)")


def drop_defaults(doc: Any, groups: Sequence[str], where: str) -> None:
    """The defaults list without its entries for ``groups``."""
    entries = _defaults(doc, where)
    for i in reversed(range(len(entries))):
        if isinstance(entries[i], dict) and any(g in entries[i] for g in groups):
            del entries[i]  # ruamel moves the comments of the later entries up


def set_items(seq: Any, items: Sequence[Any]) -> None:
    """Replace the items of the list node ``seq``, its style and the comment after it kept."""
    tail = seq.ca.items.get(len(seq) - 1) if len(seq) else None  # a comment below the list
    seq.ca.items.clear()
    seq.clear()
    seq.extend(items)
    if tail is not None and len(seq):
        seq.ca.items[len(seq) - 1] = tail


def retarget(node: Any, old: str, new: str) -> None:
    """Every ``_target_`` under ``node`` that starts with ``old`` starts with ``new`` instead."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str) and value.startswith(old):
                node[key] = new + value[len(old):]
            else:
                retarget(value, old, new)
    elif isinstance(node, list):
        for item in node:
            retarget(item, old, new)


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
                doc = load_yaml(option)
                retarget(doc, f"{EXAMPLES_PACKAGE}.{example.module}.", f"{name}.{example.module}.")
                dump_yaml(doc, option)
    config_path = dest / "config.yaml"
    config = load_yaml(config_path)
    if example.freq:
        freq_path = src / "freq" / f"{example.freq}.yaml"
        freq = load_yaml(freq_path)
        for entry in freq.get("defaults") or []:
            for key, option in (entry.items() if isinstance(entry, dict) else []):
                if key.startswith("override /"):
                    set_default(config, key.removeprefix("override /"), str(option), str(config_path))
        for path in _leaves({k: v for k, v in freq.items() if k != "defaults"}):
            value = yaml_node(freq, path, str(freq_path))
            group_dir = dest / path[0]
            if group_dir.is_dir():  # a group's setting: into the option the project uses
                option = next(d[path[0]] for d in _defaults(config, str(config_path))
                              if isinstance(d, dict) and path[0] in d)
                target = group_dir / f"{option}.yaml"
                doc = load_yaml(target)
                set_node(doc, path[1:], value, str(target))
                dump_yaml(doc, target)
            else:
                set_node(config, path, value, str(config_path))
    dump_yaml(config, config_path)
    _finish_conf(dest, example)


def _finish_conf(dest: Path, example: Example) -> None:
    """Drop the overlays that swap in another example; the workflow runs this example's sweep."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    for overlay in (dest / "freq").glob("*.yaml"):
        if _switches_example(overlay):
            overlay.unlink()
    workflow_path = dest / "workflow.yaml"
    workflow = load_yaml(workflow_path)
    where = str(workflow_path)
    set_items(yaml_node(workflow, ["sweep"], where), [DoubleQuotedScalarString(example.sweep)])
    set_items(yaml_node(workflow, ["analyze", "scripts"], where), list(example.analyses))
    dump_yaml(workflow, workflow_path)


def write_command_conf(dest: Path, example: Example) -> None:
    """A command project's conf/: ``runner: command`` with the script's argv, no model or dataset."""
    for group in ("model", "dataset"):
        shutil.rmtree(dest / group)
    config_path = dest / "config.yaml"
    config = load_yaml(config_path)
    drop_defaults(config, ("model", "dataset"), str(config_path))
    set_default(config, "runner", "command", str(config_path))
    dump_yaml(config, config_path)
    runner_path = dest / "runner" / "command.yaml"
    runner = load_yaml(runner_path)
    set_node(runner, ["argv"], parse_yaml(str(example.argv)), str(runner_path))
    set_node(runner, ["resume_argv"], parse_yaml(str(example.resume_argv)), str(runner_path))
    if example.stop_signal:
        set_node(runner, ["stop_signal"], example.stop_signal, str(runner_path))
    dump_yaml(runner, runner_path)
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
- On SIGUSR1 `train.py` checkpoints at its step and exits; `runner.stop_signal: SIGUSR1` tells
  expflow to pass on a cluster's time-limit warning or a cancel that way, and a retry continues it.
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
