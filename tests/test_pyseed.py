"""expflow.runner.pyseed: every Python process of a command is seeded before user code runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from expflow.runner.pyseed import SEED_PATH, seeded_env

WARNING = "expflow: warning: seeding hook: "

# Draws from every RNG the hook seeds, as a program that never seeds anything would; with
# --child it also runs itself in a subprocess (which inherits the environment) and reports
# the child's draws; --numpy-first imports numpy before torch (torch imports numpy itself).
VALUES = """
import json, random, subprocess, sys
first = random.random()
if "--numpy-first" in sys.argv:
    import numpy
import torch, numpy
out = {
    "random": first,
    "numpy": float(numpy.random.rand()),
    "torch": torch.rand(3).tolist(),
    "hook_left": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_SeedOnImport"],
    "loaders_patched": [m.__name__ for m in (numpy, torch) if "exec_module" in vars(m.__loader__)],
}
if "--child" in sys.argv:
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, check=True)
    out["child"] = json.loads(child.stdout)
print(json.dumps(out))
"""


def base_env() -> dict[str, str]:
    """This environment without anything that would seed (or fix hashes) on its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EXPFLOW_") and k != "PYTHONHASHSEED"}


def run(script: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True,
                          text=True, timeout=180)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def expected(seed: int) -> dict[str, object]:
    """What explicit seeding gives: the hook must be indistinguishable from it."""
    import numpy
    import torch

    return {
        "random": random.Random(seed).random(),
        "numpy": float(numpy.random.RandomState(seed % 2**32).rand()),
        "torch": torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist(),
    }


def draws(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    assert WARNING not in result.stderr, result.stderr
    return json.loads(result.stdout)


def rng_values(d: dict[str, object]) -> dict[str, object]:
    return {k: d[k] for k in ("random", "numpy", "torch")}


@pytest.fixture(scope="module")
def torch_runs(tmp_path_factory):
    """The torch-importing runs (each pays torch's start-up), started all at once."""
    script = write(tmp_path_factory.mktemp("pyseed") / "values.py", VALUES)
    unseeded = seeded_env(base_env(), 0)  # our sitecustomize on the path, but no EXPFLOW_SEED
    del unseeded["EXPFLOW_SEED"], unseeded["PYTHONHASHSEED"]
    jobs = {
        "a": (seeded_env(base_env(), 1234), "--child"),
        "b": (seeded_env(base_env(), 1234), "--numpy-first"),
        "other": (seeded_env(base_env(), 99),),
        "unseeded1": (unseeded,),
        "unseeded2": (unseeded,),
    }
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(run, script, env, *args) for name, (env, *args) in jobs.items()}
        return {name: draws(f.result()) for name, f in futures.items()}


def test_same_seed_reruns_identically(torch_runs):
    # b imports numpy before torch, a lets torch import it: the order does not matter.
    assert rng_values(torch_runs["a"]) == rng_values(torch_runs["b"]) == expected(1234)


def test_another_seed_or_none_differs(torch_runs):
    assert rng_values(torch_runs["other"]) == expected(99)
    for key in ("random", "numpy", "torch"):
        assert torch_runs["other"][key] != torch_runs["a"][key]
        assert torch_runs["unseeded1"][key] != torch_runs["unseeded2"][key]


def test_child_process_is_seeded_too(torch_runs):
    assert rng_values(torch_runs["a"]["child"]) == rng_values(torch_runs["a"])


def test_hook_removes_itself_once_both_are_seeded(torch_runs):
    for name in ("a", "b"):
        assert torch_runs[name]["hook_left"] == []
        assert torch_runs[name]["loaders_patched"] == []


def test_process_without_numpy_or_torch_never_imports_them(tmp_path):
    script = write(tmp_path / "plain.py", """
        import json, random, sys
        print(json.dumps([random.random(), "numpy" in sys.modules, "torch" in sys.modules]))
    """)
    result = run(script, seeded_env(base_env(), 5))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [random.Random(5).random(), False, False]


def test_user_sitecustomize_later_on_path_still_runs(tmp_path):
    user = write(tmp_path / "user" / "sitecustomize.py", """
        import builtins
        builtins.USER_SITECUSTOMIZE = __name__
    """)
    script = write(tmp_path / "check.py", """
        import builtins, json, random, sys
        print(json.dumps([getattr(builtins, "USER_SITECUSTOMIZE", None),
                          sys.modules["sitecustomize"].__file__, random.random()]))
    """)
    env = seeded_env({**base_env(), "PYTHONPATH": str(user.parent)}, 7)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(SEED_PATH), str(user.parent)]
    result = run(script, env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["sitecustomize", str(user), random.Random(7).random()]


def test_str_hashes_are_stable(tmp_path):
    script = write(tmp_path / "hash.py", 'print(hash("abc"), hash(b"abc"))\n')
    first, again, other = (run(script, seeded_env(base_env(), s)) for s in (11, 11, 12))
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout != other.stdout


def test_broken_seed_runs_the_program_normally(tmp_path):
    script = write(tmp_path / "prog.py", """
        import random, numpy
        print("ok", 0 <= random.random() < 1, numpy.arange(3).sum())
    """)
    env = seeded_env(base_env(), 1)
    env["EXPFLOW_SEED"] = "notanumber"
    result = run(script, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "True", "3"]
    lines = result.stderr.splitlines()
    assert len(lines) <= 1 and all(line.startswith(WARNING) for line in lines), result.stderr


def test_seeding_failure_warns_once_and_never_breaks_the_program(tmp_path):
    # A `torch` without manual_seed (a stand-in, or a broken install): one warning, no error.
    write(tmp_path / "fake" / "torch" / "__init__.py", "VALUE = 42\n")
    script = write(tmp_path / "prog.py", "import torch, torch\nprint(torch.VALUE)\n")
    result = run(script, seeded_env({**base_env(), "PYTHONPATH": str(tmp_path / "fake")}, 3))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "42"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(WARNING + "seeding torch failed"), result.stderr


def test_loader_without_exec_module(tmp_path):
    # A finder whose `numpy` spec has a legacy loader (load_module only): seeded all the same.
    script = write(tmp_path / "prog.py", """
        import importlib.machinery, sys, types, warnings
        warnings.simplefilter("ignore", ImportWarning)  # importlib's "no exec_module" warning

        class LegacyLoader:
            def load_module(self, name):
                module = types.ModuleType(name)
                module.random = types.SimpleNamespace(seed=lambda s: print("numpy seeded", s))
                sys.modules[name] = module
                return module

        class Finder:
            def find_spec(self, name, path=None, target=None):
                if name == "numpy":
                    return importlib.machinery.ModuleSpec(name, LegacyLoader())
                return None

        sys.meta_path.insert(1, Finder())  # after the seeding hook, which asks it
        import numpy
        print("imported", type(numpy.__loader__).__name__)
    """)
    result = run(script, seeded_env(base_env(), 2**32 + 5))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["numpy seeded 5", "imported LegacyLoader"]
    assert WARNING not in result.stderr


def test_seeded_env():
    base = {"PATH": "/bin", "PYTHONPATH": os.pathsep.join(["/a", str(SEED_PATH), "/b"])}
    env = seeded_env(base, 42)
    assert base["PYTHONPATH"] == os.pathsep.join(["/a", str(SEED_PATH), "/b"])  # a copy
    assert env["PYTHONPATH"] == os.pathsep.join([str(SEED_PATH), "/a", "/b"])
    assert env["PATH"] == "/bin"
    assert (env["EXPFLOW_SEED"], env["PYTHONHASHSEED"], env["EXPFLOW_DETERMINISTIC"]) == ("42", "42", "1")
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"

    env = seeded_env({"PYTHONPATH": "", "PYTHONHASHSEED": "0", "CUBLAS_WORKSPACE_CONFIG": ":16:8"}, 2**40)
    assert env["PYTHONPATH"] == str(SEED_PATH)  # no empty entry (which would mean the cwd)
    assert env["PYTHONHASHSEED"] == "0" and env["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert env["EXPFLOW_SEED"] == str(2**40)

    env = seeded_env({}, -3, deterministic=False)
    assert env["PYTHONHASHSEED"] == str(2**32 - 3)  # Python accepts only [0, 2**32)
    assert env["EXPFLOW_DETERMINISTIC"] == "0" and "CUBLAS_WORKSPACE_CONFIG" not in env
    with pytest.raises(TypeError):
        seeded_env({}, 1.5)  # type: ignore[arg-type]


def test_seed_path_is_a_plain_directory():
    assert (SEED_PATH / "sitecustomize.py").is_file()
    assert not (SEED_PATH / "__init__.py").exists()
