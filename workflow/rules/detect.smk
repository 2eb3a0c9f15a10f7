# Detection: fine-tune mmdetection's detectors from a pretrained backbone (or from random weights).


rule detect:
    input:
        backbone=lambda wildcards: detection_backbone(wildcards.backbone),
        data=lambda wildcards: prepared("voc" if wildcards.task.startswith("voc") else "coco"),
    output:
        results("detect/{backbone}/{task}-{bn}/metrics.json"),
    wildcard_constraints:
        task="voc-faster-rcnn|coco-retinanet|coco-mask-rcnn",
        bn="train|frozen",
    params:
        backbone=lambda wildcards, input: input.backbone or "random",
        root=lambda wildcards: data_root("voc" if wildcards.task.startswith("voc") else "coco")[0],
        out=lambda wildcards, output: Path(output[0]).parent,
        scale="smoke" if SMOKE else "paper",
        launcher=launcher(rule_gpus("detect")),
    resources:
        **job_resources("detect"),
    log:
        results("logs/detect/{backbone}/{task}-{bn}.log"),
    shell:
        "{params.launcher} detect {wildcards.task:q} --backbone {params.backbone:q} --data {params.root:q}"
        " --bn {wildcards.bn:q} --out {params.out:q} --scale {params.scale:q} > {log:q} 2>&1"
