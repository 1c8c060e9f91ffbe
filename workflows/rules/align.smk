# The terminal `align` rule (align.enabled): `expflow align` on align.spec. An expflow source
# on the workflow's runs directory aligns exactly the runs this workflow planned, one series
# each, next to whatever VERL/ROLL/SLIME runs the spec lists. Cheap and local.
ALIGN_SPEC = config["align"]["spec"]
ALIGN_DIR = config["align"]["out"] or f"{RUNS_DIR}/.align"
# align.strict: a package with damaged record lines fails the rule (default: its valid
# records are aligned, with a warning in the rule's log).
ALIGN_OPTIONS = "--strict" if config["align"].get("strict") else ""


# Defined only when enabled: its input names every run's train output (a cost per run while
# Snakemake reads the workflow, for nothing when it is off).
if config["align"]["enabled"]:

    localrules:
        align,


    rule align:
        """Align the spec's frameworks onto one metric naming: tables, check, plots, tracker experiments."""
        input:
            spec=ALIGN_SPEC,
            trained=expand(rules.train.output.done, run=sorted(RUNS)),
        output:
            table=f"{ALIGN_DIR}/aligned.parquet",
            csv=f"{ALIGN_DIR}/aligned.csv",
            check=f"{ALIGN_DIR}/check.json",
        log:
            f"{WORKFLOW_DIR}/logs/align.log",
        benchmark:
            f"{WORKFLOW_DIR}/benchmarks/align.tsv"
        params:
            out=lambda wildcards, output: os.path.dirname(output.table),
            # <runs>/<run>/train.done -> <runs>
            runs=lambda wildcards, input: os.path.dirname(os.path.dirname(input.trained[0])) if input.trained else RUNS_DIR,
            run_ids=",".join(sorted(RUNS)),
            options=ALIGN_OPTIONS,
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../envs/expflow.yaml"
        shell:
            f'expflow align "{{input.spec}}" --out "{{params.out}}" --workflow-runs "{{params.runs}}" '
            f'--run-ids "{{params.run_ids}}" {{params.options}} > {{log}} 2>&1{on_failure("align")}'
