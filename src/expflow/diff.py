"""``expflow diff RUN_A RUN_B``: what differs between two save-packages.

Overrides, the resolved config (key by key; the run id is the packages' names, not a
difference), the code snapshot (files added, removed or changed, with a unified diff of the
changed text files), the software environment (distributions, Python, torch's build), the
machines they last trained on, and the metrics at the last step both recorded.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import Any

from expflow.package import SavePackage

IGNORED_CONFIG_KEYS = ("run_id",)  # differs between any two runs: it is what names them
MAX_DIFF_LINES = 400  # of one file's unified diff, in the text output


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _changes(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose values differ (a missing key is ``None`` on its side, with ``missing``)."""
    out = []
    for key in sorted(set(a) | set(b)):
        if key in a and key in b and a[key] == b[key]:
            continue
        entry: dict[str, Any] = {"key": key, "a": a.get(key), "b": b.get(key)}
        if key not in a or key not in b:
            entry["missing"] = "a" if key not in a else "b"
        out.append(entry)
    return out


def _override_key(text: str) -> str:
    return text.split("=", 1)[0].lstrip("+~").strip()


def config_changes(pa: SavePackage, pb: SavePackage, overridden: set[str] = frozenset()) -> list[dict[str, Any]]:
    """The resolved configs' differing keys. A key an override that differs between the two
    names (or under a group it chose) has ``override: true``; a key that only mirrors such a
    key (an interpolation of it: the same pair of values) has ``follows: <that key>``."""
    from omegaconf import OmegaConf

    flat = []
    for pkg in (pa, pb):
        cfg = OmegaConf.to_container(pkg.config(), resolve=False, enum_to_str=True)
        f = _flatten(cfg)
        for key in IGNORED_CONFIG_KEYS:
            f.pop(key, None)
        flat.append(f)
    changes = _changes(*flat)
    primary: dict[str, tuple[str, str]] = {}
    for c in changes:
        key = c["key"]
        c["override"] = any(key == k or key.startswith(k + ".") for k in overridden)
        if c["override"]:
            primary[key] = (json.dumps(c["a"], sort_keys=True), json.dumps(c["b"], sort_keys=True))
    for c in changes:
        if not c["override"]:
            pair = (json.dumps(c["a"], sort_keys=True), json.dumps(c["b"], sort_keys=True))
            c["follows"] = next((k for k, v in primary.items() if v == pair), None)
    return changes


def code_changes(pa: SavePackage, pb: SavePackage) -> list[dict[str, Any]]:
    a = {e.path: e for e in pa.code_files()}
    b = {e.path: e for e in pb.code_files()}
    out = []
    for path in sorted(set(a) | set(b)):
        if path in a and path in b and a[path].sha256 == b[path].sha256:
            continue
        change = "added" if path not in a else "removed" if path not in b else "changed"
        entry: dict[str, Any] = {"path": path, "change": change}
        if change == "changed":
            entry["diff"] = _unified(pa.code_dir / path, pb.code_dir / path, path)
        out.append(entry)
    return out


def _unified(fa: Path, fb: Path, path: str) -> str | None:
    """A unified diff of two text files (None: binary or unreadable)."""
    try:
        ta, tb = fa.read_bytes(), fb.read_bytes()
        la, lb = ta.decode("utf-8").splitlines(keepends=True), tb.decode("utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError):
        return None
    return "".join(difflib.unified_diff(la, lb, f"a/{path}", f"b/{path}"))


def software(pkg: SavePackage) -> tuple[str | None, dict[str, Any] | None]:
    """The package's latest software environment (the last training process's, else the
    one it was made in): its id and content (None where the package predates records)."""
    from expflow.package import environment

    m = pkg.manifest()
    sha = next((e.get("software") for e in reversed(m.get("environments") or []) if e.get("software")),
               m.get("environment"))
    if not sha:
        return None, None
    return sha, environment.read(pkg.path, sha)


def environment_changes(pa: SavePackage, pb: SavePackage) -> dict[str, Any]:
    (sa, ea), (sb, eb) = software(pa), software(pb)
    out: dict[str, Any] = {"a": sa, "b": sb, "same": sa == sb and sa is not None, "changes": []}
    if ea is None or eb is None:
        out["unknown"] = [side for side, e in (("a", ea), ("b", eb)) if e is None]
        return out
    if sa != sb:
        flat = []
        for e in (ea, eb):
            f = _flatten({k: v for k, v in e.items() if k != "distributions"})
            for name, d in (e.get("distributions") or {}).items():
                f[f"distributions.{name}"] = d.get("version") + (f" from {d['from']}" if d.get("from") else "") \
                    if isinstance(d, dict) and isinstance(d.get("version"), str) else d
            flat.append(f)
        out["changes"] = _changes(*flat)
    machines = []
    for pkg in (pa, pb):
        entries = pkg.manifest().get("environments") or []
        last = entries[-1] if entries else {}
        machines.append({"host": last.get("host"),
                         "gpus": [g.get("name") for g in last.get("gpus") or [] if isinstance(g, dict)],
                         "driver": next((g.get("driver") for g in last.get("gpus") or [] if isinstance(g, dict)), None),
                         "slurm_partition": (last.get("slurm") or {}).get("partition")})
    out["machine"] = _changes(*machines)
    return out


def metric_changes(pa: SavePackage, pb: SavePackage) -> dict[str, Any]:
    from expflow.package import effective_metrics

    series = []
    for pkg in (pa, pb):
        by_step: dict[int, dict[str, float]] = {}
        for r in effective_metrics(pkg.scan_records().records):
            by_step.setdefault(int(r["step"]), {}).update(r["values"])
        series.append(by_step)
    common = sorted(set(series[0]) & set(series[1]))
    if not common:
        return {"step": None, "values": []}
    step = common[-1]
    va, vb = series[0][step], series[1][step]
    values = [{"metric": k, "a": va.get(k), "b": vb.get(k),
               "delta": (vb[k] - va[k]) if k in va and k in vb else None}
              for k in sorted(set(va) | set(vb))]
    return {"step": step, "values": values}


def diff(pa: SavePackage, pb: SavePackage) -> dict[str, Any]:
    ma, mb = pa.manifest(), pb.manifest()
    oa, ob = list(ma.get("overrides") or []), list(mb.get("overrides") or [])
    return {
        "a": {"path": str(pa.path), "run_id": pa.run_id},
        "b": {"path": str(pb.path), "run_id": pb.run_id},
        "overrides": {"only_a": [o for o in oa if o not in ob], "only_b": [o for o in ob if o not in oa]},
        "config": config_changes(pa, pb, {_override_key(o) for o in oa + ob if (o in oa) != (o in ob)}),
        "code": code_changes(pa, pb),
        "environment": environment_changes(pa, pb),
        "metrics": metric_changes(pa, pb),
    }


def _show(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value) if not isinstance(value, str) else value


def render(d: dict[str, Any]) -> str:
    a, b = d["a"]["run_id"], d["b"]["run_id"]
    lines = [f"a = {d['a']['path']} ({a})", f"b = {d['b']['path']} ({b})", ""]
    o = d["overrides"]
    lines.append("overrides: the same" if not (o["only_a"] or o["only_b"]) else "overrides:")
    lines += [f"  only in a: {x}" for x in o["only_a"]] + [f"  only in b: {x}" for x in o["only_b"]]
    own = [c for c in d["config"] if not c.get("follows")]
    lines.append("config: the same" if not d["config"] else f"config: {len(own)} key(s) differ")
    for c in own:
        mirrors = [f["key"] for f in d["config"] if f.get("follows") == c["key"]]
        lines.append(f"  {c['key']}: {_show(c['a'])} -> {_show(c['b'])}"
                     + (f"  (and {', '.join(mirrors)}, which follow from it)" if mirrors else ""))
    lines.append("code: the same" if not d["code"] else f"code: {len(d['code'])} file(s) differ")
    for c in d["code"]:
        lines.append(f"  {c['change']}: {c['path']}")
        text = c.get("diff")
        if c["change"] == "changed" and text is None:
            lines.append("    (binary or not UTF-8)")
        elif text:
            body = text.splitlines()
            lines += [f"    {line}" for line in body[:MAX_DIFF_LINES]]
            if len(body) > MAX_DIFF_LINES:
                lines.append(f"    ... {len(body) - MAX_DIFF_LINES} more line(s) (--json has all)")
    env = d["environment"]
    if env.get("unknown"):
        lines.append(f"environment: not recorded in {' and '.join(env['unknown'])}")
    elif env["same"]:
        lines.append(f"environment: the same software ({env['a'][:12]})")
    else:
        lines.append(f"environment: {len(env['changes'])} difference(s)")
        lines += [f"  {c['key']}: {_show(c['a'])} -> {_show(c['b'])}" for c in env["changes"]]
    for c in env.get("machine", []):
        lines.append(f"  machine {c['key']}: {_show(c['a'])} -> {_show(c['b'])}")
    m = d["metrics"]
    if m["step"] is None:
        lines.append("metrics: no step recorded in both")
    else:
        differ = [v for v in m["values"] if v["a"] != v["b"]]
        lines.append(f"metrics at step {m['step']} (the last both recorded): "
                     + ("the same" if not differ else f"{len(differ)} of {len(m['values'])} differ"))
        for v in m["values"]:
            delta = f"  ({v['delta']:+.6g})" if v["delta"] is not None and v["a"] != v["b"] else ""
            lines.append(f"  {v['metric']}: {_show(v['a'])} -> {_show(v['b'])}{delta}" if v["a"] != v["b"]
                         else f"  {v['metric']}: {_show(v['a'])}")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("diff", help="what differs between two packages: overrides, config, code, "
                                           "environment, metrics")
    p.add_argument("a", metavar="RUN_A", help="a save-package directory")
    p.add_argument("b", metavar="RUN_B", help="another save-package directory")
    p.add_argument("--json", action="store_true", help="print the differences as JSON")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    pa, pb = SavePackage.open(args.a), SavePackage.open(args.b)
    d = diff(pa, pb)
    print(json.dumps(d, indent=2, default=str) if args.json else render(d))
    return 0
