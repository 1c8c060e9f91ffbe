rule package:
    """Materialize the run's save-package: code snapshot and resolved config (QUEUED)."""
    output:
        config=f"{RUNS_DIR}/{{run}}/config.yaml",
    log:
        f"{WORKFLOW_DIR}/logs/package/{{run}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/package/{{run}}.tsv"
    priority: RUN_PRIORITY
    resources:
        mem_mb=1000,
        runtime=10,
        **CLUSTER,
    params:
        config_dir=config["config_dir"],
        overrides=run_overrides,
    conda:
        "../envs/expflow.yaml"
    shell:
        f'expflow materialize --runs "$(dirname "$(dirname {{output.config}})")" '
        f"--config-dir {{params.config_dir}} --run-id {{wildcards.run}} -- {{params.overrides}} > {{log}} 2>&1"
        f"{on_failure('package')}"
