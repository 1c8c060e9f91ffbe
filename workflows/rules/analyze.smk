# Every script of analyze.scripts in one job per run (ANALYSES, analysis_targets: common.smk).
if ANALYSES:

    rule analyze:
        """Run the analysis scripts over a trained package, in one process (its own GPU lease)."""
        input:
            done=rules.train.output.done,
        output:
            done=[f"{RUNS_DIR}/{{run}}/analysis/{script}/analysis.done" for script in ANALYSES],
        log:
            f"{WORKFLOW_DIR}/logs/analyze/{{run}}.log",
        benchmark:
            f"{WORKFLOW_DIR}/benchmarks/analyze/{{run}}.tsv"
        threads: 1
        group: RUN_GROUP
        resources:
            gpu=config["analyze"]["gpus"],
            mem_mb=config["analyze"]["mem_mb"],
            runtime=config["analyze"]["runtime"],
            **CLUSTER,
        params:
            scripts=" ".join(ANALYSES),
        conda:
            "../envs/expflow.yaml"
        shell:
            'expflow analyze "$(dirname {input.done})" {params.scripts} --gpus {resources.gpu} > {log} 2>&1'
            + on_failure("analyze")
            + "; touch {output.done}"

