# flatmix: the reproduction DAG of "Rethinking Image Mixture for Unsupervised Visual Representation
# Learning". Run `snakemake --profile workflow/profiles/local` (see README.md).
import os
import sys

from snakemake.logging import logger
from snakemake.utils import min_version, validate

from flatmix.errors import FlatmixError
from flatmix.workflow_config import check_renamed

min_version("9.0")


# Paths relative to this file, so `--directory` can put the run anywhere.
configfile: os.path.join(workflow.basedir, "config.yaml")


try:
    check_renamed(config)  # an earlier flatmix's key: say its new name, before the schema's generic error
except FlatmixError as e:
    sys.exit(f"flatmix: error: {e}")
validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


onsuccess:
    # The one file to open after a run, said last rather than left among the jobs' lines.
    if os.path.exists(results("report/report.html")):
        logger.info(f"flatmix: the report is {os.path.abspath(results('report/report.html'))}")


rule all:
    input:
        report=rules.report.output,
        converted=[c for run in PRETRAIN_RUNS for c in converted(run)],
    default_target: True
