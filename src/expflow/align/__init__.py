"""Cross-framework metric alignment (VERL, ROLL, SLIME, expflow runs).

``expflow align conf/align/<name>.yaml --out DIR`` reads each framework's metrics from its
source (SwanLab offline/cloud, W&B offline/cloud, TensorBoard, CSV, expflow packages),
puts step groups on one train-step axis (seed 002), maps names onto ``aligned_metrics``
(presets for VERL, ROLL, SLIME), and writes the aligned long table, a missing-metric
check, comparison plots and one tracker experiment per framework.

Modules: ``spec`` (schema, loading), ``seed_dialect`` (seed 002's config.yaml),
``presets``, ``credentials``, ``sources`` (one per kind; several files merged), ``cache``,
``steps`` (step groups, merge rules), ``derived``, ``aligned`` (one framework), ``check``,
``report`` (plots, HTML), ``tracker``, ``rerun`` (an unchanged re-run writes nothing),
``pipeline`` (the whole run), ``cli``.
"""

from typing import Any

# Lazy: ``expflow --help`` imports the CLI module of this package, which must stay light.
_EXPORTS = {
    "AlignResult": "expflow.align.pipeline",
    "WorkflowRuns": "expflow.align.pipeline",
    "run_alignment": "expflow.align.pipeline",
    "Plan": "expflow.align.spec",
    "load_spec": "expflow.align.spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
