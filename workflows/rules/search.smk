# The adaptive search (search: in conf/workflow.yaml; SEARCH in common.smk): search.parallel
# trial-slot jobs, each holding one trial's GPUs (the gpu resource, like a train job), sharing
# one Optuna study; then the search's page. A slot's done file names the budget: a larger
# search.n_trials runs the slots again, and they continue the same study.
if SEARCH:

    rule search_slot:
        """Ask the study for trials, train each as a package (pruned early or not), tell the result."""
        output:
            done=f"{SEARCH_DIR}/slots/{SEARCH['n_trials']}-{{slot}}.done",
        log:
            f"{WORKFLOW_DIR}/logs/search/{SEARCH['name']}-{{slot}}.log",
        threads: config["train"]["threads"]
        resources:
            gpu=SEARCH["gpus"],
            mem_mb=config["train"]["mem_mb"],
            runtime=config["train"]["runtime"] * SEARCH_ROUNDS,
            **CLUSTER,
        retries: TRAIN_RETRIES
        params:
            config_dir=config["config_dir"],
            spec=shlex.quote(SEARCH["spec"]),
        conda:
            "../envs/expflow.yaml"
        shell:
            f'expflow search-slot --runs "{RUNS_DIR}" --config-dir {{params.config_dir}} --slot {{wildcards.slot}} '
            f"--spec {{params.spec}} >> {{log}} 2>&1{on_failure('search_slot')}; touch {{output.done}}"

    localrules:
        search_results,

    rule search_results:
        """The search's trials by objective, history and parameter importance, as one page."""
        input:
            SEARCH_SLOTS,
        output:
            html=f"{SEARCH_DIR}/search.html",
        log:
            f"{WORKFLOW_DIR}/logs/search/{SEARCH['name']}-results.log",
        conda:
            "../envs/expflow.yaml"
        shell:
            f'expflow search "{RUNS_DIR}" --name {SEARCH["name"]} --html {{output.html}} > {{log}} 2>&1'
            f"{on_failure('search_results')}"
