"""Analysis of save-packages: ``expflow analyze <package> <script>``.

A script is a Python file with one function::

    def analyze(ctx: AnalysisContext) -> dict | AnalysisOutput:
        acc = ctx.evaluate()["val/acc"]           # model and data are built on first use
        fig = Figure(); ...
        return AnalysisOutput(results={"acc": acc}, figures={"errors": fig})

It runs in its own process with the package's code snapshot first on the import path,
so the model is the code that trained it. Scripts are looked up in the project's
``analysis/`` folder, then the package's snapshot of it, then those shipped with expflow
(``accuracy``, ``learning_curves``, ``compare_checkpoints``). Results go to
``<package>/analysis/<script>/``.
"""

from expflow.analysis.context import AnalysisContext, AnalysisError, AnalysisOutput, NotApplicable
from expflow.analysis.discovery import ScriptRef, available_scripts, find_script
from expflow.analysis.runner import analysis_records, headline, run_analyses, run_analysis

__all__ = [
    "AnalysisContext",
    "AnalysisError",
    "AnalysisOutput",
    "NotApplicable",
    "ScriptRef",
    "analysis_records",
    "available_scripts",
    "find_script",
    "headline",
    "run_analyses",
    "run_analysis",
]
