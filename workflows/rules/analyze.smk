rule analyze:
    """Run one analysis script over a trained package (its own GPU lease)."""
    input:
        done=rules.train.output.done,
    output:
        done=f"{RUNS_DIR}/{{run}}/analysis/{{script}}/analysis.done",
    log:
        f"{WORKFLOW_DIR}/logs/analyze/{{run}}-{{script}}.log",
    benchmark:
        f"{WORKFLOW_DIR}/benchmarks/analyze/{{run}}-{{script}}.tsv"
    threads: 1
    resources:
        gpu=config["analyze"]["gpus"],
        mem_mb=config["analyze"]["mem_mb"],
        runtime=config["analyze"]["runtime"],
        **CLUSTER,
    conda:
        "../envs/expflow.yaml"
    shell:
        'expflow analyze "$(dirname {input.done})" {wildcards.script} --gpus {resources.gpu} > {log} 2>&1'
        + on_failure("analyze")
        + "; touch {output.done}"
