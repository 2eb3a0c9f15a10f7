"""The `flatmix` command: one subcommand per pipeline step; every Snakemake rule calls one of them.

Bad input ends the command with exit status 2 and one line naming the problem, never a traceback: a
wrong flag or an out-of-range number before any work starts, an unreadable or unwritable path (a
read-only or full disk) when it is met. No output may land on an input (flatmix.paths).
"""

import argparse
import json
import math
import os
import sys

from flatmix import __version__, atomic, paths
from flatmix.errors import FlatmixError


def _synth(args):
    from flatmix.data.synth import synthesise
    summary = synthesise(args.out, seed=args.seed, size=args.size, train_per_class=args.train_per_class,
                         val_per_class=args.val_per_class, voc_images=args.voc_images,
                         coco_images=args.coco_images)
    print(json.dumps(summary))


def _prepare(args):
    if args.dataset.startswith("cifar"):
        from flatmix.data.cifar import prepare
        manifest = prepare(args.dataset, args.root, args.out)
    elif args.dataset.startswith("imagenet"):
        from flatmix.data.imagenet100 import prepare
        manifest = prepare(args.imagenet_root, args.out, getattr(args, "class_list", None),
                           every_class=args.dataset == "imagenet1k")
    else:
        from flatmix import provenance
        if args.dataset == "voc":
            from flatmix.data.voc import check
        else:
            from flatmix.data.coco import check
        paths.output_folder("--out", args.out)
        paths.refuse_overlap({"--out": args.out}, {"--root": args.root})
        manifest = {**check(args.root), "provenance": provenance.collect()}
        atomic.write_json(f"{args.out}/manifest.json", manifest)
    summary = {k: v for k, v in manifest.items() if k not in ("per_class", "provenance")}
    print(json.dumps(summary))


def _pretrain(args):
    from flatmix import pretrain
    from flatmix.presets import DEFAULTS, PRESET_DESCRIPTIONS, PRESETS, RENAMED
    from flatmix.runconfig import resolve
    if args.list_presets:
        print(_described(PRESET_DESCRIPTIONS))
        return
    if args.preset is None and args.config is None and not args.set:
        raise FlatmixError("pretrain needs --preset NAME, --config FILE or --set KEY=VALUE (--list-presets shows the names)")
    if args.out is None:
        raise FlatmixError("pretrain needs --out DIR")
    cfg = resolve(DEFAULTS, PRESETS, args.preset, args.config, args.set or [], renamed=RENAMED)
    paths.output_folder("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"--config": args.config, "data.root": cfg["data"]["root"] or None})
    print(json.dumps(pretrain.run(cfg, args.out, force=args.force)))


def _bench(args):
    from flatmix import bench
    bench.run(args)


def _bench_mixer(args):
    from flatmix import bench
    bench.run_mixer(args)


def _bench_jpegs(args):
    from flatmix import bench
    paths.output_folder("--out", args.out)
    bench.run_jpegs(args)


def _convert(args):
    from flatmix.convert import convert
    paths.output_file("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"the checkpoint": args.src})
    print(json.dumps(convert(args.src, args.to, args.out, args.view or "")))


def _linear(args):
    from flatmix.linear import run
    paths.output_folder("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"--backbone": args.backbone, "--data": args.data})
    metrics = run(args.backbone, args.data, args.out, epochs=args.epochs, lr=args.lr, milestones=args.milestones,
                  batch_size=args.batch_size, weight_decay=args.weight_decay, image_size=args.image_size,
                  workers=args.workers, seed=args.seed, feature_norm=args.feature_norm)
    print(json.dumps({k: metrics[k] for k in ("top1", "top5", "diverged", "epochs", "protocol")}))


def _knn(args):
    from flatmix.knn import run
    paths.output_folder("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"--backbone": args.backbone, "--data": args.data})
    metrics = run(args.backbone, args.data, args.out, k=args.k, t=args.t, batch_size=args.batch_size,
                  image_size=args.image_size, workers=args.workers, max_images=args.max_images)
    print(json.dumps({k: metrics[k] for k in ("top1", "top5", "k", "t", "bank_images", "val_images")}))


def _flatness(args):
    from flatmix.flatness import run
    paths.output_folder("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"--data": args.data,
                                               **{f"--backbone {b}": b.partition("=")[2] for b in args.backbone}})
    print(json.dumps(run(args.backbone, args.data, args.out, image_size=args.image_size,
                         batch_size=args.batch_size, workers=args.workers, title=args.title)))


def _detect(args):
    from flatmix.detect.runner import run
    paths.output_folder("--out", args.out)
    paths.refuse_overlap({"--out": args.out}, {"--data": args.data,
                                               "--backbone": None if args.backbone == "random" else args.backbone})
    print(json.dumps(run(args.task, args.backbone, args.data, args.bn, args.out, scale=args.scale,
                         dry_run=args.dry_run, keep_checkpoints=args.keep_checkpoints)))


def _plan(args):
    from flatmix.plan import Plan
    from flatmix.workflow_config import load_config
    rates = {k: v for k, v in vars(args).items() if k.endswith(("_per_s", "_per_iter")) and v is not None}
    plan = Plan(load_config(*(args.config or ["config.yaml"])), args.preset, rates)
    print("\n".join(plan.commands()) if args.commands else plan.text())
    if note := plan.note():
        print(note, file=sys.stderr)


def _report(args):
    from flatmix.report import REPORT_FILES, folders, run
    results, out = folders(args.config, args.results, args.out)
    paths.output_folder("--out", out)
    paths.refuse_overlap({f"--out {name}": os.path.join(out, name) for name in REPORT_FILES},
                         {"--config": args.config})
    print(json.dumps(run(args.config, results, out)))


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = [-1]
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 30,40,50, got {text!r}")
    return values


def _at_least(low, kind=int, high=None):
    """An argparse type: a number of `kind` (finite) that is at least `low` (and at most `high`)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} "
                                             f"{bounds}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _above_zero(text):
    value = _at_least(0.0, float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def _described(descriptions, indent=""):
    """One aligned line per name: `name  what it is`."""
    width = max(map(len, descriptions))
    return "\n".join(f"{indent}{name:<{width}}  {text}" for name, text in descriptions.items())


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default at the end of its help line, so `--help` answers what a run will use. A
    default of None is not shown (the help says what happens instead), nor that an off flag is off. The
    description and epilog keep their line breaks (plan's one line per preset)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, argparse.SUPPRESS) or \
                (action.nargs == 0 and action.default is False):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): `flatmix linear: error: ...`, and with
    _HelpFormatter for the parser and (through parser_class) every subparser."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"formatter_class": _HelpFormatter, **kwargs})

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    from flatmix import experiments
    from flatmix.detect import TASKS
    parser = _Parser(prog="flatmix", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("synth", help="write the embedded data set (ImageNet, VOC, COCO formats)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=_at_least(0), default=0, help="random seed: the same seed writes the same files")
    p.add_argument("--size", type=_at_least(16, high=1024), default=64, help="ImageNet image side; detection images are 2-4x")
    p.add_argument("--train-per-class", type=_at_least(1, high=10000), default=8,
                   help="ImageNet train images per class")
    p.add_argument("--val-per-class", type=_at_least(1, high=10000), default=4, help="ImageNet val images per class")
    p.add_argument("--voc-images", type=_at_least(1, high=100000), default=16, help="images per VOC split")
    p.add_argument("--coco-images", type=_at_least(1, high=100000), default=16, help="images per COCO split")
    p.set_defaults(run=_synth)

    p = commands.add_parser("pretrain", help="one MoCo or CMC pretraining run (CPU, or under torchrun)")
    p.add_argument("--preset", help="a named run (--list-presets)")
    p.add_argument("--config", help="a YAML run spec; with --preset, it overrides the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one dotted key, e.g. train.epochs=3 (repeatable)")
    p.add_argument("--out", help="run folder: config.yaml, metrics.jsonl, last.pth, checkpoint.pth")
    p.add_argument("--force", action="store_true", help="resume from a last.pth made with another config")
    p.add_argument("--list-presets", action="store_true", help="print each preset's name and what it is, and exit")
    p.set_defaults(run=_pretrain)

    p = commands.add_parser("convert", help="write a checkpoint's ResNet backbone for torchvision, mmdet or detectron2")
    p.add_argument("src", help="a checkpoint: this project's, facebookresearch MoCo, the CMC code base's, "
                               "torchvision or mmdetection")
    p.add_argument("--to", required=True, choices=["torchvision", "mmdet", "detectron2"], help="the target framework")
    p.add_argument("--out", required=True, help="the output file (detectron2: a .pkl, the suffix detectron2 reads "
                                                "matching_heuristics from)")
    p.add_argument("--view", choices=["l", "ab"], help="CMC: which half (l: the L/Y encoder, ab: the ab/CbCr one)")
    p.set_defaults(run=_convert)

    p = commands.add_parser("linear", help="linear classification on a frozen backbone (top-1, top-5)")
    p.add_argument("--backbone", required=True, help="a checkpoint in any format `flatmix convert` reads")
    p.add_argument("--data", required=True, help="a prepared data set with train/ and val/ class folders")
    p.add_argument("--out", required=True, help="folder for metrics.json, linear.pth and last.pth")
    p.add_argument("--epochs", type=_at_least(1),
                   help="default: the protocol's (ImageNet-100 60, ImageNet-1K and CIFAR 100)")
    p.add_argument("--lr", type=_above_zero,
                   help="default: the protocol's (ImageNet-100 10, ImageNet-1K and CIFAR 30)")
    p.add_argument("--milestones", type=_int_list, help="epochs of x0.1, e.g. 30,40,50 (default: the protocol's)")
    p.add_argument("--batch-size", type=_at_least(1), default=256, help="global batch (default: %(default)s)")
    p.add_argument("--weight-decay", type=_at_least(0.0, float), default=0.0, help="the linear layer's weight decay")
    p.add_argument("--image-size", type=_at_least(16), default=224, help="crop side in pixels")
    p.add_argument("--workers", type=_at_least(0), default=8, help="data loader workers per process")
    p.add_argument("--seed", type=_at_least(0), default=0, help="random seed (initialisation, data order, crops)")
    p.add_argument("--feature-norm", action="store_true",
                   help="a parameter-free BatchNorm before the linear layer (MAE's probe; not the paper's protocol)")
    p.set_defaults(run=_linear)

    from flatmix.knn import K, T
    p = commands.add_parser("knn", help="weighted kNN classification on a frozen backbone (top-1, top-5)")
    p.add_argument("--backbone", required=True, help="a checkpoint in any format `flatmix convert` reads")
    p.add_argument("--data", required=True, help="a prepared data set: train/ the bank, val/ the queries")
    p.add_argument("--out", required=True, help="folder for metrics.json")
    p.add_argument("--k", type=_at_least(1), default=K, help="neighbours that vote (default: %(default)s)")
    p.add_argument("--t", type=_above_zero, default=T, help="temperature of the votes' exp(cosine / t) weights "
                                                            "(default: %(default)s)")
    p.add_argument("--max-images", type=_at_least(1), help="at most this many images of each of train/ and val/, "
                                                           "spread over the classes (default: all)")
    p.add_argument("--batch-size", type=_at_least(1), default=256, help="global batch (default: %(default)s)")
    p.add_argument("--image-size", type=_at_least(16), default=224, help="centre crop side in pixels")
    p.add_argument("--workers", type=_at_least(0), default=8, help="data loader workers per process")
    p.set_defaults(run=_knn)

    p = commands.add_parser("flatness", help="Figure 5: sorted softmax of the final layer, per backbone")
    p.add_argument("--backbone", required=True, action="append", metavar="NAME=CKPT",
                   help="a named checkpoint (repeat for each curve)")
    p.add_argument("--data", required=True, help="a prepared data set with val/ class folders")
    p.add_argument("--out", required=True, help="folder for flatness.png and flatness.json")
    p.add_argument("--title", help="the plot's title, also kept in flatness.json (default: Figure 5's)")
    p.add_argument("--image-size", type=_at_least(16), default=224, help="centre crop side in pixels")
    p.add_argument("--batch-size", type=_at_least(1), default=256, help="images per forward pass")
    p.add_argument("--workers", type=_at_least(0), default=8, help="data loader workers")
    p.set_defaults(run=_flatness)

    p = commands.add_parser("detect", help="fine-tune and evaluate a detector with mmdetection")
    p.add_argument("task", choices=list(TASKS),
                   help="the detector and data set (Tables 7-8)")
    p.add_argument("--backbone", required=True, help="a checkpoint in any format `flatmix convert` reads, or 'random'")
    p.add_argument("--data", required=True, help="the VOCdevkit (VOC tasks) or the COCO root")
    p.add_argument("--bn", required=True, choices=["train", "frozen"],
                   help="train: BN fine-tuned (the paper's No Freeze); frozen: BN affine and statistics frozen")
    p.add_argument("--out", required=True, help="folder for config.py, override.py, work/ and metrics.json")
    p.add_argument("--scale", choices=["smoke", "paper"], default="paper",
                   help="paper: the paper's schedule and image sizes; smoke: one epoch of small images, for a CPU")
    p.add_argument("--dry-run", action="store_true", help="write config.py only")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the fine-tuned detector's checkpoints (work/*.pth) once it is evaluated; by default a "
                        "finished run removes them, so that a rerun trains afresh rather than resuming a finished run")
    p.set_defaults(run=_detect)

    p = commands.add_parser("plan", help="the runs, images and GPU-hours a preset will cost, per table",
                            epilog="presets:\n" + _described(experiments.PRESET_DESCRIPTIONS, indent="  "))
    p.add_argument("--preset", help="one of the presets below (default: the config's preset)")
    p.add_argument("--config", action="append", metavar="FILE",
                   help="the workflow config; repeat to layer files as Snakemake's --configfile does "
                        "(default: config.yaml)")
    p.add_argument("--commands", action="store_true",
                   help="print instead each pretraining run's command as the workflow runs it (launcher, settings, "
                        "prepared data and output folder, relative to the folder Snakemake runs in), with a comment "
                        "naming the parts of the paper that need it")
    for flag, help_text in (("--moco-pairs-per-s", "MoCo pretraining pairs/s per GPU"),
                            ("--cmc-pairs-per-s", "CMC pretraining pairs/s per GPU"),
                            ("--probe-images-per-s", "linear probe images/s per GPU"),
                            ("--faster-rcnn-s-per-iter", "Faster R-CNN/RetinaNet s per 2-image iteration"),
                            ("--mask-rcnn-s-per-iter", "Mask R-CNN s per 2-image iteration")):
        p.add_argument(flag, type=_above_zero,
                       help=help_text + " (default: the measured figure, printed in the plan's first line)")
    p.set_defaults(run=_plan)

    p = commands.add_parser("report", help="Markdown + HTML report: every table beside the paper, figures, provenance")
    p.add_argument("--config", default="config.yaml", help="the workflow config (default: %(default)s)")
    p.add_argument("--results", help="the preset's results folder (default: the config's RESULTS/PRESET, "
                                     "where the DAG puts them, e.g. results/smoke)")
    p.add_argument("--out", help="output folder (default: RESULTS/PRESET/report)")
    p.set_defaults(run=_report)

    p = commands.add_parser("bench", help="throughput benchmarks (JSON lines)")
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    b = benches.add_parser("pretrain", help="pretraining step pairs/s, with and without the mixtures")
    b.add_argument("--method", choices=["moco", "cmc"], default="moco", help="the pretraining method")
    b.add_argument("--arch", default="resnet50", help="the encoder, as the run spec's model.arch")
    b.add_argument("--batch-size", type=_at_least(1), default=256, help="global batch (split over torchrun processes)")
    b.add_argument("--image-size", type=_at_least(16), default=224, help="view side in pixels")
    b.add_argument("--steps", type=_at_least(1),
                   help="timed steps, their median and spread reported (default: 20, and with a real loader 20x the "
                        "batches its workers make ahead: 640 for 16 pil workers; fewer are refused)")
    b.add_argument("--warmup", type=_at_least(0),
                   help="untimed steps first (default: 5, and at least the batches a real loader makes ahead)")
    b.add_argument("--precision", choices=["fp32", "bf16"],
                   help="the encoders' autocast precision (default: fp32 on a CPU, bf16 on CUDA)")
    b.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels_last memory format for the encoders")
    b.add_argument("-K", type=_at_least(1), default=65536, help="MoCo queue length (CMC: min(K, 16384))")
    b.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA where there is one")
    b.add_argument("--loader", choices=["synthetic", "pil", "gpu"], default="synthetic",
                   help="synthetic: random tensors on the device; pil, gpu: the pretraining loaders on --data")
    b.add_argument("--data", metavar="DIR", help="images in DIR/train/<class>/ (see `flatmix bench jpegs`)")
    b.add_argument("--workers", type=_at_least(0), default=min(os.cpu_count(), 16), help="loader workers per process")
    b.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    b.add_argument("--config", action="append", metavar="FILE",
                   help="the workflow config whose experiments.best.METHOD and experiments.imagenet100.METHOD_p "
                        "are the mixtures timed; repeat to layer files as `plan --config` does (default: config.yaml)")
    b.set_defaults(run=_bench)
    b = benches.add_parser("mixer", help="the Mixer alone against a copy of the views, seconds on a CPU")
    b.add_argument("--method", choices=["moco", "cmc"], default="moco", help="whose mixture: MoCo mixes 2 views, CMC 1")
    b.add_argument("--batch-size", type=_at_least(2), default=64, help="images per view (a mixture needs 2 or more)")
    b.add_argument("--image-size", type=_at_least(16), default=224, help="view side in pixels")
    b.add_argument("--steps", type=_at_least(1), default=20, help="timed calls, their median reported")
    b.add_argument("--warmup", type=_at_least(0), default=3, help="untimed calls first")
    b.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the views' dtype")
    b.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA where there is one")
    b.add_argument("--config", action="append", metavar="FILE",
                   help="the workflow config whose experiments.best.METHOD is timed, as for `bench pretrain`")
    b.set_defaults(run=_bench_mixer)
    b = benches.add_parser("jpegs", help="write ImageNet-like JPEGs (sizes, bytes) for `bench pretrain --data`")
    b.add_argument("--out", required=True, help="folder for train/<class>/ JPEGs")
    b.add_argument("--images", type=_at_least(1), default=10000, help="JPEGs in all")
    b.add_argument("--classes", type=_at_least(1), default=10, help="class folders they are spread over")
    b.add_argument("--seed", type=_at_least(0), default=0, help="random seed: the same seed writes the same files")
    b.set_defaults(run=_bench_jpegs)

    p = commands.add_parser("prepare", help="check a data set and write its manifest")
    datasets = p.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    d = datasets.add_parser("imagenet100", help="ImageNet-100 class folders (symlinks) from ImageNet")
    d.add_argument("--imagenet-root", required=True,
                   help="an ImageNet folder with train/ and val/ (or the Kaggle download)")
    d.add_argument("--out", required=True, help="folder for the class folders and manifest.json")
    d.add_argument("--class-list", help="a file of wnids (default: the paper's ImageNet-100 list)")
    d = datasets.add_parser("imagenet1k", help="every ImageNet class (symlinks), for Table 6 and the transfer runs")
    d.add_argument("--imagenet-root", required=True,
                   help="an ImageNet folder with train/ and val/ (or the Kaggle download)")
    d.add_argument("--out", required=True, help="folder for the class folders and manifest.json")
    for name, published in (("cifar10", "cifar-10-binary.tar.gz"), ("cifar100", "cifar-100-binary.tar.gz")):
        d = datasets.add_parser(name, help=f"{name.upper().replace('CIFAR', 'CIFAR-')} class folders (PNG) from its "
                                           f"binary version ({published}; the pickled python version is refused)")
        d.add_argument("--root", required=True, help=f"a folder holding {published} (its MD5 is checked) or the "
                                                     "folder it unpacks to")
        d.add_argument("--out", required=True, help="folder for train/, val/ (the test set) and manifest.json")
    d = datasets.add_parser("voc", help="check a VOCdevkit (VOC2007 trainval/test, VOC2012 trainval)")
    d.add_argument("--root", required=True, help="the VOCdevkit folder")
    d.add_argument("--out", default="prepared/voc", help="folder for manifest.json (default: %(default)s)")
    d = datasets.add_parser("coco", help="check a COCO 2017 root (train2017, val2017, annotations)")
    d.add_argument("--root", required=True, help="the COCO folder")
    d.add_argument("--out", default="prepared/coco", help="folder for manifest.json (default: %(default)s)")
    p.set_defaults(run=_prepare)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except FlatmixError as e:
        print(f"flatmix: error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:  # a path met during the work: read-only, full, vanished, not a folder
        where = f"{e.filename}: " if e.filename else ""
        print(f"flatmix: error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("flatmix: interrupted", file=sys.stderr)
        sys.exit(130)
