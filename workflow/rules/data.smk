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
        "flatmix synth --out {params.out} --seed {params.synth[seed]} --size {params.synth[size]}"
        " --train-per-class {params.synth[train_per_class]} --val-per-class {params.synth[val_per_class]}"
        " --voc-images {params.synth[voc_images]} --coco-images {params.synth[coco_images]} 2> {log}"


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
        class_list=lambda wildcards: f"--class-list {config['data']['class_list']}"
        if config["data"]["class_list"] and wildcards.subset == "imagenet100" else "",
    resources:
        **job_resources("prepare_imagenet"),
    log:
        results("logs/prepare_{subset}.log"),
    shell:
        "flatmix prepare {wildcards.subset} --imagenet-root {params.root} --out {params.out}"
        " {params.class_list} 2> {log}"


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
        "flatmix prepare {wildcards.dataset} --root {params.root} --out {params.out} 2> {log}"
