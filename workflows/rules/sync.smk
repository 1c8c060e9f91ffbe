SYNC_MARKER = f"{RUNS_DIR}/{{run}}/tracker/sync/{SYNC_TARGET}.done"
SYNC_COMMAND = 'expflow sync "$(dirname {input.done})" {params.options} --done {params.marker} > {log} 2>&1' + on_failure("sync")


rule sync:
    """Upload a trained package to the tracking server in sync.target (terminal; off by default).
    Incremental: a rerun uploads only what is new. No network or credentials: the package is
    deferred (the job succeeds; the next workflow run syncs again, by sync_retry)."""
    input:
        done=rules.train.output.done,
    output:
        done=SYNC_MARKER,
    log:
        f"{WORKFLOW_DIR}/logs/sync/{{run}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/sync/{{run}}.tsv"
    params:
        options=sync_options(),
        marker=lambda wildcards, output: output.done,
    threads: 1
    resources:
        mem_mb=1000,
        **CLUSTER,
    conda:
        "../envs/expflow.yaml"
    shell:
        SYNC_COMMAND


rule sync_retry:
    """Sync a package again whose marker said deferred when the workflow was planned: it
    rewrites the marker (done, or deferred once more: then the next run retries again). Its
    output, named after the deferred marker's time, records that this retry ran."""
    input:
        done=rules.train.output.done,
    output:
        retry=f"{WORKFLOW_DIR}/sync/{{run}}.retry-{{stamp}}",
    log:
        f"{WORKFLOW_DIR}/logs/sync/{{run}}.retry-{{stamp}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/sync/{{run}}.retry-{{stamp}}.tsv"
    params:
        options=sync_options(),
        marker=lambda wildcards: expand(SYNC_MARKER, run=wildcards.run)[0],
    threads: 1
    resources:
        mem_mb=1000,
        **CLUSTER,
    conda:
        "../envs/expflow.yaml"
    shell:
        SYNC_COMMAND + "; touch {output.retry}"
