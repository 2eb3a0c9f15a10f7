# Data: synthesise the embedded set (when a root is not configured), then check and prepare each data set;
# shared by every preset, under RESULTS/data/ (see common.smk).


rule synth:
    output:
        synth_marker(),
    params:
        out=lambda wildcards, output: Path(output[0]).parent,
        synth=config["synth"],
    resources:
        **job_resources("synth"),
    log:
        f"{DATA}/logs/synth.log",
    shell:
        "flatmix synth --out {params.out:q} --seed {params.synth[seed]:q} --size {params.synth[size]:q}"
        " --train-per-class {params.synth[train_per_class]:q} --val-per-class {params.synth[val_per_class]:q}"
        " --voc-images {params.synth[voc_images]:q} --coco-images {params.synth[coco_images]:q} 2> {log:q}"


rule prepare_imagenet:
    input:
        data_root("imagenet")[1],
    output:
        f"{DATA}/{{prepared}}/manifest.json",
    wildcard_constraints:
        prepared=one_of([prepared_name(d) for d in ("imagenet100", "imagenet1k")]),
    params:
        subset=lambda wildcards: Path(wildcards.prepared).name,
        root=data_root("imagenet")[0],
        out=lambda wildcards, output: Path(output[0]).parent,
        class_list=lambda wildcards: ["--class-list", config["data"]["class_list"]]
        if config["data"]["class_list"] and Path(wildcards.prepared).name == "imagenet100" else [],
    resources:
        **job_resources("prepare_imagenet"),
    log:
        f"{DATA}/logs/{{prepared}}.log",
    shell:
        "flatmix prepare {params.subset:q} --imagenet-root {params.root:q} --out {params.out:q}"
        " {params.class_list:q} 2> {log:q}"


rule prepare_detection:
    input:
        lambda wildcards: data_root(Path(wildcards.prepared).name)[1],
    output:
        f"{DATA}/{{prepared}}/manifest.json",
    wildcard_constraints:
        prepared=one_of([prepared_name(d) for d in ("voc", "coco")]),
    params:
        dataset=lambda wildcards: Path(wildcards.prepared).name,
        root=lambda wildcards: data_root(Path(wildcards.prepared).name)[0],
        out=lambda wildcards, output: Path(output[0]).parent,
    resources:
        **job_resources("prepare_detection"),
    log:
        f"{DATA}/logs/{{prepared}}.log",
    shell:
        "flatmix prepare {params.dataset:q} --root {params.root:q} --out {params.out:q} 2> {log:q}"


rule prepare_cifar:
    """CIFAR-10 or CIFAR-100 from its binary version (checked against its MD5 when given as the .tar.gz),
    as PNG class folders; the real root only (no synthetic stand-in)."""
    output:
        f"{DATA}/{{prepared}}/manifest.json",
    wildcard_constraints:
        prepared=one_of([prepared_name(d) for d in ("cifar10", "cifar100")]),
    params:
        dataset=lambda wildcards: Path(wildcards.prepared).name,
        root=lambda wildcards: config["data"][Path(wildcards.prepared).name],
        out=lambda wildcards, output: Path(output[0]).parent,
    resources:
        **job_resources("prepare_cifar"),
    log:
        f"{DATA}/logs/{{prepared}}.log",
    shell:
        "flatmix prepare {params.dataset:q} --root {params.root:q} --out {params.out:q} 2> {log:q}"
