# The report is cheap and reads every package: it runs where Snakemake runs, never as a cluster job.
localrules:
    report,


rule report:
    """One self-contained HTML page of every package: run table, learning curves, sweep, analyses."""
    input:
        trained=expand(rules.train.output.done, run=sorted(RUNS)),
        analyses=analysis_targets(sorted(RUNS)),
        search=SEARCH_SLOTS,  # the trials of a search are packages of the runs directory too
    output:
        html=REPORT_HTML,
    log:
        f"{WORKFLOW_DIR}/logs/report.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/report.tsv"
    params:
        runs=lambda wildcards: RUNS_DIR,  # a function: the packages are read, not a prefix of a file
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        "../envs/expflow.yaml"
    shell:
        'expflow report --runs "{params.runs}" --out "{output.html}" > {log} 2>&1' + on_failure("report")
