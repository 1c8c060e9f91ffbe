rule train:
    """Train the package on its leased GPU(s); a retry continues from the last checkpoint."""
    input:
        config=rules.package.output.config,
    output:
        done=f"{RUNS_DIR}/{{run}}/train.done",
    log:
        f"{WORKFLOW_DIR}/logs/train/{{run}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/train/{{run}}.tsv"
    threads: config["train"]["threads"]
    priority: RUN_PRIORITY
    group: RUN_GROUP
    resources:
        gpu=GPU_RESOURCE,
        mem_mb=config["train"]["mem_mb"],
        runtime=config["train"]["runtime"],
        **CLUSTER,
        **NODE_RESOURCES,
    retries: TRAIN_RETRIES
    conda:
        "../envs/expflow.yaml"
    shell:
        # The done file is made by the shell itself: no touch process between a freed device
        # and the next job's lease.
        TRAIN_COMMAND + on_failure("train") + "; : > {output.done}"
