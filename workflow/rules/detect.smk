# Detection: fine-tune mmdetection's detectors from a pretrained backbone (or from random weights).
from flatmix.detect import TASKS

DETECTION = Detection("{backbone}", "{task}", "{bn}")  # the rule's output and log, as flatmix.layout places them


rule detect:
    input:
        backbone=lambda wildcards: detection_backbone(wildcards.backbone),
        data=lambda wildcards: prepared(TASKS[wildcards.task]),
    output:
        results(DETECTION.path),
    wildcard_constraints:
        task=one_of(TASKS),
        bn="train|frozen",
    params:
        backbone=lambda wildcards, input: input.backbone or "random",
        root=lambda wildcards: data_root(TASKS[wildcards.task])[0],
        out=lambda wildcards, output: Path(output[0]).parent,
        scale=EXPERIMENTS.scale,
        launcher=launcher(rule_gpus("detect")),
    resources:
        **job_resources("detect"),
    log:
        results(DETECTION.log),
    shell:
        "{params.launcher} detect {wildcards.task:q} --backbone {params.backbone:q} --data {params.root:q}"
        " --bn {wildcards.bn:q} --out {params.out:q} --scale {params.scale:q} > {log:q} 2>&1"
