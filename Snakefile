# expflow workflow: Hydra sweeps -> save-packages -> training on leased GPUs.
#   snakemake --cores 2                                   # the default sweep, CPU
#   snakemake --cores 8 --resources gpu=4                 # at most 4 GPU jobs, each on its own device(s)
#   snakemake --cores 2 --config sweep="optim.lr=1e-3,3e-3 seed=range(3)"
from snakemake.utils import min_version

from expflow.workflow import check_config_file, config_errors_exit, record_lock_owner

min_version("8.0")

# A missing or malformed workflow config is one line, not Snakemake's error and traceback
# (config errors while planning, in common.smk, likewise).
with config_errors_exit():
    check_config_file("conf/workflow.yaml", optional=bool(workflow.overwrite_configfiles))


configfile: "conf/workflow.yaml"


include: "workflows/rules/common.smk"
include: "workflows/rules/package.smk"
include: "workflows/rules/train.smk"
include: "workflows/rules/analyze.smk"
include: "workflows/rules/report.smk"
include: "workflows/rules/sync.smk"
include: "workflows/rules/align.smk"
include: "workflows/rules/search.smk"


onstart:
    # Who holds Snakemake's lock now (common.smk removes it after a SIGKILL of this process).
    record_lock_owner()


rule all:
    input:
        all_targets(),
    default_target: True
