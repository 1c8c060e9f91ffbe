"""expflow: declarative ML experiments built on Hydra, save-packages and Snakemake."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # PEP 562: ``expflow.log`` imports expflow.client on first use, so that ``import expflow``
    # stays as light as it is (no typing, json or socket import for it).
    if name == "log":
        from expflow.client import log

        globals()["log"] = log
        return log
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
