rule sync:
    """Upload a trained package to the tracking server in sync.target (terminal; off by default).
    Incremental: a rerun uploads only what is new. No network or credentials: the package is
    deferred (the job succeeds; the next workflow run drops its marker and syncs again)."""
    input:
        done=rules.train.output.done,
    output:
        done=f"{RUNS_DIR}/{{run}}/tracker/sync/{SYNC_TARGET}.done",
    log:
        f"{WORKFLOW_DIR}/logs/sync/{{run}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/sync/{{run}}.tsv"
    params:
        options=sync_options(),
    threads: 1
    resources:
        mem_mb=1000,
        **CLUSTER,
    conda:
        "../envs/expflow.yaml"
    shell:
        'expflow sync "$(dirname {input.done})" {params.options} --done {output.done} > {log} 2>&1' + on_failure("sync")
