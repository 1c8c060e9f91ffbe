"""expflow's start-up seeding of every Python process of a command run.

A command run (``runner=command``) puts this directory first on the command's PYTHONPATH
(:func:`expflow.runner.pyseed.seeded_env`), so every Python process that inherits that
environment imports this module at start-up, before any user code: ``python train.py``
itself, torchrun's launcher and its workers, subprocesses and ``spawn``-ed multiprocessing
workers. With ``EXPFLOW_SEED`` set to an integer each such process seeds

* Python's ``random`` module, right away;
* NumPy's global RNG (``numpy.random.seed``), right after ``numpy`` finishes importing;
* torch's default generators (``torch.manual_seed``: CPU now, CUDA lazily), right after
  ``torch`` finishes importing;

and ``str``/``bytes`` hashes are stable because the environment also sets PYTHONHASHSEED.
Every process gets the same seed: telling ranks or workers apart is the program's business.
NumPy and torch are never imported here: a process that does not use them neither pays for
them nor finds them in ``sys.modules``.

Not covered: programs that are not Python (or Python started with ``-I``/``-E``/``-S``, which
skip PYTHONPATH or site); RNGs that a library creates from OS entropy (``numpy.random.
default_rng()`` or ``random.Random()`` with no seed, ``os.urandom``, ``uuid4``); and
nondeterministic GPU kernels (CUBLAS_WORKSPACE_CONFIG is set, but
``torch.use_deterministic_algorithms`` is left to the program).

This module shadows any other ``sitecustomize`` (a user's, or the interpreter's own), so it
runs the next one found on ``sys.path`` after this directory, as Python would have.
"""

import _thread  # built in: no import cost
import os
import sys

_WARNING = "expflow: warning: seeding hook: "


def _warn(reason):
    # One line, and never an error of its own: stderr may be closed or missing (pythonw).
    try:
        sys.stderr.write(_WARNING + str(reason) + "\n")
        sys.stderr.flush()
    except Exception:
        pass


def _seed_numpy(numpy, seed):
    numpy.random.seed(seed % 2**32)  # the legacy global RandomState takes 32-bit seeds


def _seed_torch(torch, seed):
    # manual_seed seeds the CPU generator and (lazily, on first use) every CUDA device's.
    # Deliberately not torch.use_deterministic_algorithms(True): it slows CPU runs and changes
    # which kernels a program gets; the environment sets CUBLAS_WORKSPACE_CONFIG so a program
    # that asks for determinism itself can have it. torch maps negative seeds modulo 2**64
    # itself; doing it here also accepts seeds beyond 64 bits instead of failing.
    torch.manual_seed(seed % 2**64)


class _SeedOnImport:
    """A ``sys.meta_path`` finder that seeds numpy and torch once they finish importing.

    It finds nothing itself: for a pending top-level name it asks the finders after it for
    the spec, then wraps the loader's ``exec_module`` on that loader instance (its class and
    identity stay the same, so ``module.__loader__`` is untouched for inspect, importlib.
    resources, pkg_resources...). The wrapper seeds after the module's code has run, i.e.
    once ``import torch`` is complete, even when the import happens inside another import
    (torch imports numpy while it initialises). Once both are seeded the finder leaves
    ``sys.meta_path`` and the wrappers are removed.
    """

    def __init__(self, seed):
        self.seed = seed
        self.pending = {"numpy": _seed_numpy, "torch": _seed_torch}
        self.hooked = []  # (loader, attribute name) with our wrapper as an instance attribute
        self.searching = set()  # (name, thread id): find_spec calls in progress, see find_spec

    def install(self):
        # Normally neither is imported yet; a .pth file may have imported one already.
        for name in list(self.pending):
            if name in sys.modules:
                self.loaded(name, sys.modules[name])
        if self.pending:
            sys.meta_path.insert(0, self)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:  # every import of the process passes here: keep it cheap
            return None
        # A finder below may itself call importlib.util.find_spec(fullname), which comes back
        # here: answer that nested call with None rather than recursing.
        key = (fullname, _thread.get_ident())
        if key in self.searching:
            return None
        self.searching.add(key)
        try:
            spec = self._find_elsewhere(fullname, path, target)  # their errors are the import's own
        finally:
            self.searching.discard(key)
        if spec is not None:
            try:
                self._hook(fullname, spec)
            except Exception as e:
                self.give_up(fullname, f"cannot hook the import of {fullname}: {e!r}")
        return spec

    def _find_elsewhere(self, fullname, path, target):
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue  # a legacy find_module-only finder: importlib itself still asks it after us
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def _hook(self, name, spec):
        loader = spec.loader
        if loader is None or (spec.origin is None and spec.submodule_search_locations is not None):
            return  # a namespace package (say, a directory called "torch"): not the library
        if hasattr(loader, "exec_module"):
            attr = "exec_module"
        elif hasattr(loader, "load_module"):
            attr = "load_module"  # a legacy loader: importlib falls back to load_module(name)
        else:
            self.give_up(name, f"{name}'s loader {type(loader).__name__} has neither exec_module "
                               f"nor load_module; {name} is not seeded")
            return
        if getattr(getattr(loader, attr), "_expflow_seeding", False):
            return  # one loader serving several modules (a zipimporter): already wrapped
        original = getattr(loader, attr)

        def run_then_seed(arg):
            result = original(arg)  # an import that fails raises here: nothing to seed
            # exec_module(module) / load_module(name) -> module; the module tells which it was
            # (a shared loader also executes modules that are not ours).
            module = arg if attr == "exec_module" else result
            self.loaded(getattr(module, "__name__", None), module)
            return result

        run_then_seed._expflow_seeding = True
        setattr(loader, attr, run_then_seed)  # may raise (a loader with __slots__): caught above
        self.hooked.append((loader, attr))

    def loaded(self, name, module):
        seed_module = self.pending.pop(name, None)
        if seed_module is None:
            return
        # Popped before seeding: an import the seeding triggers (numpy.random) or a reload never
        # seeds twice, and a failure is reported once, not on every later import.
        try:
            seed_module(module, self.seed)
        except Exception as e:
            _warn(f"seeding {name} failed: {e!r}")
        if not self.pending:
            self.remove()

    def give_up(self, name, reason):
        self.pending.pop(name, None)
        _warn(reason)
        if not self.pending:
            self.remove()

    def remove(self):
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for loader, attr in self.hooked:
            try:
                # Only our instance attribute goes; the class's method shows through again. A
                # wrapper still running (we may be inside it) holds its own reference.
                if getattr(vars(loader).get(attr), "_expflow_seeding", False):
                    delattr(loader, attr)
            except Exception:
                pass
        self.hooked = []


def _seed_from_env():
    text = os.environ.get("EXPFLOW_SEED", "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        _warn(f"EXPFLOW_SEED={text!r} is not an integer; nothing is seeded")
        return None


def _start_seeding():
    try:
        seed = _seed_from_env()
        if seed is None:
            return
        import random

        random.seed(seed)
        _SeedOnImport(seed).install()
    except Exception as e:
        _warn(f"not seeded: {e!r}")


def _same_dir(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _chain_next_sitecustomize():
    """Run the ``sitecustomize`` this module shadows, as ``site`` would have imported it."""
    here = os.path.dirname(os.path.abspath(__file__))
    entries = [p for p in sys.path if isinstance(p, str)]  # PathFinder skips the others too
    mine = [i for i, p in enumerate(entries) if p and _same_dir(p, here)]
    # The entries after ours (none before it can hold a sitecustomize, or that one would have
    # been imported instead of us); every spelling of our own directory is skipped.
    rest = entries[mine[0] + 1:] if mine else entries
    rest = [p for p in rest if not (p and _same_dir(p, here))]

    from importlib.machinery import PathFinder

    spec = PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    import importlib.util

    module = importlib.util.module_from_spec(spec)
    # Registered as `sitecustomize` while (and after) it runs, as a plain import would have.
    # Its errors propagate: site reports them as "Error in sitecustomize", as it would have.
    sys.modules["_expflow_sitecustomize"] = sys.modules.get(__name__)  # us, for the curious
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_start_seeding()
_chain_next_sitecustomize()
