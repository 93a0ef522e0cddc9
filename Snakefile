# ddpbench: how well does DistributedDataParallel training scale on this machine?
# Table of contents only: configuration, rule files, and the final targets.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/peak.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/compare.smk"


# Set by common.smk in every Snakemake that reads it: the process a training launch ends with.
envvars:
    "DDPBENCH_SNAKEMAKE_PID",


rule all:
    default_target: True
    input:
        final_targets(),
