# flatmix: the reproduction DAG of "Rethinking Image Mixture for Unsupervised Visual Representation
# Learning". Run `snakemake --profile workflow/profiles/local` (see README.md).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


# Paths relative to this file, so `--directory` can put the run anywhere.
configfile: os.path.join(workflow.basedir, "config.yaml")


validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    input:
        report=rules.report.output,
        converted=[c for run in PRETRAIN_RUNS for c in converted(run)],
    default_target: True
