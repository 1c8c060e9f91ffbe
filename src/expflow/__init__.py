"""expflow: declarative ML experiments built on Hydra, save-packages and Snakemake."""

__version__ = "0.1.0"
