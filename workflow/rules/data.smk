# Data: synthesise the embedded set (when a root is not configured), then check and prepare each data set.


rule synth:
    output:
        synth_marker(),
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
        synth=config["synth"],
    resources:
        **job_resources("synth"),
    log:
        results("logs/synth.log"),
    shell:
        "flatmix synth --out {params.out:q} --seed {params.synth[seed]:q} --size {params.synth[size]:q}"
        " --train-per-class {params.synth[train_per_class]:q} --val-per-class {params.synth[val_per_class]:q}"
        " --voc-images {params.synth[voc_images]:q} --coco-images {params.synth[coco_images]:q} 2> {log:q}"


rule prepare_imagenet:
    input:
        data_root("imagenet")[1],
    output:
        prepared("{subset}"),
    wildcard_constraints:
        subset="imagenet100|imagenet1k",
    params:
        root=data_root("imagenet")[0],
        out=lambda wildcards, output: Path(output[0]).parent,
        class_list=lambda wildcards: ["--class-list", config["data"]["class_list"]]
        if config["data"]["class_list"] and wildcards.subset == "imagenet100" else [],
    resources:
        **job_resources("prepare_imagenet"),
    log:
        results("logs/prepare_{subset}.log"),
    shell:
        "flatmix prepare {wildcards.subset:q} --imagenet-root {params.root:q} --out {params.out:q}"
        " {params.class_list:q} 2> {log:q}"


rule prepare_detection:
    input:
        lambda wildcards: data_root(wildcards.dataset)[1],
    output:
        prepared("{dataset}"),
    wildcard_constraints:
        dataset="voc|coco",
    params:
        root=lambda wildcards: data_root(wildcards.dataset)[0],
        out=lambda wildcards, output: Path(output[0]).parent,
    resources:
        **job_resources("prepare_detection"),
    log:
        results("logs/prepare_{dataset}.log"),
    shell:
        "flatmix prepare {wildcards.dataset:q} --root {params.root:q} --out {params.out:q} 2> {log:q}"
