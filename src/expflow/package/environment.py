"""The environment a package was made and trained in: what someone needs to rebuild it on
another machine or cluster.

Two parts, kept apart because they change at different rates:

* **software** (:func:`software_environment`): every installed distribution with its version
  (what ``pip freeze`` lists; an editable or direct-URL install also says where from), the
  Python executable, version and prefix, the platform, torch's build (its version, the CUDA
  or ROCm it was built for; cuDNN is among the distributions where pip installed it), and the
  container the process runs in (Docker, Podman, Apptainer/Singularity), if any. Stored once per distinct environment in the shared store, content-addressed like code
  (``<store>/environments/<sha256[:2]>/<sha256[2:]>.json``) and hardlinked into the package
  (``environment/<sha256>.json``): 1,000 packages made in one environment cost one copy.
  Finding the distributions takes tens of milliseconds, so the store also keeps an index from
  a cheap key (the interpreter, its prefix and the mtimes of the directories distributions
  are installed in, which every install, upgrade and removal changes) to the object.
* **machine** (:func:`machine_facts`, per training process): the host, the leased GPUs with
  model, UUID, memory and driver, and the Slurm job (id, partition, nodes, requested CPUs,
  memory, GPUs, time limit), recorded in the manifest's ``environments`` list with the
  software object's id.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "expflow.environment/1"
PACKAGE_DIR = "environment"  # <package>/environment/<sha256>.json

SLURM_FACTS = {  # manifest key -> Slurm's environment variable(s), first set wins
    "job_id": ("SLURM_JOB_ID", "SLURM_JOBID"),
    "array_task": ("SLURM_ARRAY_TASK_ID",),
    "partition": ("SLURM_JOB_PARTITION",),
    "account": ("SLURM_JOB_ACCOUNT",),
    "nodes": ("SLURM_JOB_NODELIST", "SLURM_NODELIST"),
    "num_nodes": ("SLURM_JOB_NUM_NODES", "SLURM_NNODES"),
    "node": ("SLURMD_NODENAME",),
    "cpus_per_task": ("SLURM_CPUS_PER_TASK",),
    "cpus_on_node": ("SLURM_CPUS_ON_NODE",),
    "mem_per_node_mb": ("SLURM_MEM_PER_NODE",),
    "mem_per_cpu_mb": ("SLURM_MEM_PER_CPU",),
    "gpus": ("SLURM_GPUS", "SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS"),
    "tres_per_task": ("SLURM_TRES_PER_TASK",),
    "time_limit": ("SLURM_TIMELIMIT",),
    "restart_count": ("SLURM_RESTART_COUNT",),
}


# -- software --------------------------------------------------------------------------
def software_environment() -> dict[str, Any]:
    """The software this process runs with (see the module's doc)."""
    from importlib import metadata

    dists: dict[str, dict[str, Any]] = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name") if dist.metadata else None
        if not name:
            continue
        key = _normalize(name)
        if key in dists:  # shadowed by an earlier sys.path entry (Python imports that one)
            continue
        entry: dict[str, Any] = {"version": dist.version}
        origin = _direct_url(dist)
        if origin:
            entry["from"] = origin
        dists[key] = entry
    env: dict[str, Any] = {
        "format": FORMAT,
        "python": {"executable": sys.executable, "version": platform.python_version(),
                   "implementation": sys.implementation.name, "prefix": sys.prefix},
        "platform": platform.platform(),
        "distributions": dict(sorted(dists.items())),
        "container": container(),
    }
    build = torch_build()
    if build is not None:
        env["torch"] = build
    return env


def torch_build() -> dict[str, Any] | None:
    """torch's version and the CUDA/ROCm it was built for, read from its ``version.py``
    without importing it (the same whether this process uses torch or not; cuDNN, from the
    pip wheels, is among the distributions)."""
    import importlib.util
    import re

    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return None
    found = dict(re.findall(r"^(__version__|cuda|hip|git_version)\s*(?::[^=\n]*)?=\s*['\"]([^'\"]*)['\"]", text, re.M))
    return {"version": found.get("__version__"), "cuda": found.get("cuda"), "hip": found.get("hip"),
            "git_version": found.get("git_version")}


def _normalize(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _direct_url(dist: Any) -> str | None:
    """Where a distribution not from an index came from (PEP 610): the URL, with the VCS
    commit or ``(editable)``."""
    try:
        text = dist.read_text("direct_url.json")
    except Exception:
        return None
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    url = str(info.get("url", ""))
    vcs = info.get("vcs_info") if isinstance(info.get("vcs_info"), dict) else None
    if vcs and vcs.get("commit_id"):
        return f"{url}@{vcs['commit_id']}"
    if isinstance(info.get("dir_info"), dict) and info["dir_info"].get("editable"):
        return f"{url} (editable)"
    return url or None


def container() -> dict[str, Any] | None:
    """The container this process runs in, as far as the usual marks tell."""
    env = os.environ
    for var, kind in (("APPTAINER_CONTAINER", "apptainer"), ("SINGULARITY_CONTAINER", "singularity")):
        if env.get(var):
            return {"kind": kind, "image": env[var], "name": env.get("APPTAINER_NAME") or env.get("SINGULARITY_NAME")}
    if os.path.exists("/run/.containerenv"):  # Podman writes what it knows here
        facts: dict[str, Any] = {"kind": "podman"}
        try:
            for line in Path("/run/.containerenv").read_text().splitlines():
                k, _, v = line.partition("=")
                if k in ("image", "imageid", "name", "id"):
                    facts[k] = v.strip().strip('"')
        except OSError:
            pass
        return facts
    if os.path.exists("/.dockerenv"):
        facts = {"kind": "docker"}
        cid = _cgroup_container_id()
        if cid:
            facts["id"] = cid
        return facts
    return None


def _cgroup_container_id() -> str | None:
    import re

    try:
        text = Path("/proc/self/cgroup").read_text() + Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    m = re.search(r"(?:docker[-/]|containers/)([0-9a-f]{64})", text)
    return m.group(1) if m else None


# -- the store ---------------------------------------------------------------------------
def _key() -> str:
    """Changes whenever a distribution is installed, upgraded or removed (each adds or
    removes a ``*.dist-info`` entry in one of the directories that hold distributions: the
    site directories and any other ``sys.path`` entry with one), or the interpreter changes.
    Code directories on the path (a package's snapshot) are not part of it: every training
    process of one environment finds the same key."""
    import site

    sites = set(site.getsitepackages()) | {site.getusersitepackages()}
    h = hashlib.sha256(f"{FORMAT}\0{sys.executable}\0{sys.prefix}\0{sys.version}".encode())
    for entry in sys.path:
        if entry not in sites and not _holds_distributions(entry):
            continue
        try:
            st = os.stat(entry)
        except OSError:
            continue
        h.update(f"\0{entry}\0{st.st_mtime_ns}\0{st.st_ino}".encode())
    return h.hexdigest()[:32]


def _holds_distributions(entry: str) -> bool:
    try:
        with os.scandir(entry or ".") as it:
            return any(e.name.endswith((".dist-info", ".egg-info")) for e in it)
    except OSError:
        return False


def store_environment(store: str | os.PathLike[str]) -> str:
    """This process's software environment in the store (written once per distinct
    environment); its id (sha256 of its canonical JSON)."""
    root = Path(store) / "environments"
    index = root / "index" / f"{_key()}.id"
    try:
        sha = index.read_text().strip()
        if len(sha) == 64 and object_path(store, sha).is_file():
            return sha
    except OSError:
        pass
    data = json.dumps(software_environment(), sort_keys=True, indent=1).encode() + b"\n"
    sha = hashlib.sha256(data).hexdigest()
    obj = object_path(store, sha)
    if not obj.is_file():
        _publish(obj, data, mode=0o444, once=True)
    _publish(index, sha.encode(), mode=0o644)  # a cache: a lost race rewrites the same id
    return sha


def object_path(store: str | os.PathLike[str], sha: str) -> Path:
    return Path(store) / "environments" / sha[:2] / f"{sha[2:]}.json"


def _publish(path: Path, data: bytes, mode: int, once: bool = False) -> None:
    """``data`` at ``path`` through a temp file; ``once``: an object, never replaced (see
    :func:`expflow.package.codestore.publish_once`)."""
    from expflow.package.codestore import publish_once

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if once:
            publish_once(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def link_into(store: str | os.PathLike[str], sha: str, package_dir: str | os.PathLike[str]) -> Path:
    """The environment object hardlinked into the package (a copy across file systems)."""
    from expflow.package.codestore import link_or_copy

    dest = Path(package_dir) / PACKAGE_DIR / f"{sha}.json"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(object_path(store, sha), dest)
    return dest


def read(package_dir: str | os.PathLike[str], sha: str) -> dict[str, Any]:
    """A package's copy of software environment ``sha`` (PackageError: missing, damaged, or
    of another format)."""
    from expflow.package import shapes

    entry = shapes.Obj({"version": shapes.STR, "from": shapes.STR}, required=("version",))
    shape = shapes.Obj({"format": shapes.Format(FORMAT), "python": shapes.OBJECT, "platform": shapes.STR,
                        "distributions": shapes.MapOf(r".+", "a distribution name", entry),
                        "container": shapes.Nullable(shapes.OBJECT), "torch": shapes.OBJECT},
                       required=("format", "distributions"))
    return shapes.read_json(Path(package_dir) / PACKAGE_DIR / f"{sha}.json", shape, "environment record")


# -- the machine -----------------------------------------------------------------------
def machine_facts(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Where this training process runs: host, the GPUs it may use, the Slurm job."""
    environ = dict(os.environ if environ is None else environ)
    facts: dict[str, Any] = {"host": socket.gethostname(), "gpus": leased_gpus(environ)}
    slurm = {}
    for key, names in SLURM_FACTS.items():
        for name in names:
            if environ.get(name):
                slurm[key] = environ[name]
                break
    facts["slurm"] = slurm or None
    return facts


def leased_gpus(environ: dict[str, str]) -> list[dict[str, Any]]:
    """Model, UUID, memory and driver of each device CUDA_VISIBLE_DEVICES names (NVML, or the
    simulated inventory); none when it names none."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if not visible or visible.strip() in ("", "-1"):
        return []
    from expflow import gpu

    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    devices = gpu._inventory()
    driver = _driver_version() if devices and not devices[0].simulated else None
    out = []
    for d in devices:
        if str(d.index) in wanted or d.uuid in wanted:
            out.append({"index": d.index, "name": d.name, "uuid": d.uuid, "memory_mb": d.total_mb,
                        "driver": driver, **({"simulated": True} if d.simulated else {})})
    return out


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def record_attempt(pkg: Any, store: str | os.PathLike[str] | None, environ: dict[str, str] | None = None) -> None:
    """Append this training process's environment to the manifest's ``environments``
    (rank 0; the software part stored and linked once). ``environ``: the environment the
    training runs with, where it is not this process's (a command run's program)."""
    from expflow.timestamps import utc_now

    entry: dict[str, Any] = {"time": utc_now(), **machine_facts(environ)}
    if store is not None:
        try:
            sha = store_environment(store)
            link_into(store, sha, pkg.path)
            entry["software"] = sha
        except OSError:
            entry["software"] = None  # an unwritable store: the run goes on without it
    pkg.update_manifest(lambda m: m.setdefault("environments", []).append(entry))
