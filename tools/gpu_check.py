"""tools/gpu-check: the whole CUDA path of flatmix, each stage through the real CLI, in one short run.

Subcommands, because the GPU machine has no network and no mmcv/mmengine/mmdet/pycocotools:
- prepare DIR (here, with network): downloads into DIR the wheels the GPU machine lacks and mmcv's
  sdist, at the versions pinned in envs/requirements.txt and envs/mmcv.txt (the only home of the pins);
  fails if DIR would not fit the 64 MiB that travels with a device run.
- all DIR --out OUT (there, offline, in one device call): install without mmcv, then run, mmcv built
  and installed in the background while the stages that do not need it run, all inside one deadline.
- install DIR and run --out OUT, its two halves: a venv over the machine's own torch
  (--system-site-packages, and the parent's site-packages where that Python is a venv itself), the
  carried wheels, mmcv (a carried wheel, else built from its sdist by envs/build_mmcv.sh with its CUDA
  ops), flatmix editable; then every stage, timed, never stopping at a failure. One table on stdout and
  the same as OUT/gpu-check.json, every stage's full log in OUT/gpu-check.log (few files come back from
  the machine). With --device cpu --tiny the same stages run here in minutes (tests/test_gpu_check.py),
  so the script cannot rot; what cannot exist on a CPU is reported as "skipped (cpu)" with the reason.

Stages that do not depend on each other run concurrently (--jobs; the GPU has room for several small
runs), except the throughput benchmarks, which run alone so that their numbers mean something (PHASES).
A deadline (--deadline-s) leaves time to write the summary before the device's own time limit.
"""

import argparse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import re
import shlex
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time

REPO = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
CARRY_LIMIT = 64 * MIB  # what travels with a device run, this folder and the working tree together
# What the GPU machine's Python lacks among mmengine's, mmdet's, pycocotools' and flatmix's needs (its
# image has torch, torchvision, numpy, opencv-python-headless, matplotlib, scipy, pyyaml, rich, tqdm,
# pillow, attrs, six, setuptools, wheel, ninja, tensorboard: /work/.library/device/KINDS.md).
# Versions: envs/requirements.txt.
CARRIED = ("mmengine", "mmdet", "pycocotools", "addict", "yapf", "platformdirs", "termcolor", "shapely",
           "terminaltables", "jsonschema", "jsonschema-specifications", "referencing", "rpds-py")
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64")
TAIL_LINES = 15
MMCV_CHECK = "import mmcv, mmcv.ops; print('mmcv', mmcv.__version__, 'ops built with CUDA', " \
             "mmcv.ops.get_compiling_cuda_version())"
GLOBAL_MIX = ["mixture.global.mixes=4", "mixture.global.p=0.5"]
REGION_MIX = ["mixture.region.mixes=5", "mixture.region.p=0.5", "mixture.region.decay=0.2"]


# ---------------------------------------------------------------------------------------------- pins

def _normalised(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pins():
    """{normalised name: version} of envs/requirements.txt and envs/mmcv.txt."""
    found = {}
    for file in ("requirements.txt", "mmcv.txt"):
        for line in (REPO / "envs" / file).read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9_.-]+)==([^\s#]+)", line)
            if match:
                found[_normalised(match[1])] = match[2]
    return found


def build_setuptools():
    """The setuptools version mmcv's setup.py builds with (envs/mmcv.txt's `# build-setuptools:` line)."""
    text = (REPO / "envs" / "mmcv.txt").read_text()
    return re.search(r"^# build-setuptools:\s*(\S+)", text, re.M)[1]


def _pin(name, versions):
    return f"{name}=={versions[_normalised(name)]}"


# ------------------------------------------------------------------------------------------- prepare

def prepare(folder):
    """Download into FOLDER/wheels what the GPU machine lacks; returns the total size in bytes."""
    wheels = Path(folder) / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    versions = pins()
    binary = [_pin(name, versions) for name in CARRIED] + [f"setuptools=={build_setuptools()}"]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(wheels)]
    subprocess.run([*pip, "--only-binary", ":all:", "--python-version", "3.12", "--implementation", "cp",
                    *platforms, *binary], check=True)
    subprocess.run([*pip, "--no-binary", ":all:", _pin("mmcv", versions)], check=True)
    total = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    for path in sorted(wheels.iterdir()):
        print(f"{path.stat().st_size / MIB:8.2f} MiB  {path.name}")
    print(f"{total / MIB:8.2f} MiB  in all under {folder} (limit {CARRY_LIMIT // MIB} MiB with the working tree)")
    return total


# ------------------------------------------------------------------------------------------- install

def _timed(label, argv, log, timeout=None, env=None):
    """Run one install step, its output appended to `log`; prints and returns (label, ok, seconds). A
    step past `timeout` is ended with its children (a compiler left running would slow every stage)."""
    start = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(map(str, argv))}\n")
        f.flush()
        begins = f.tell()
        proc = subprocess.Popen(list(map(str, argv)), stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            ok = proc.wait(timeout=timeout) == 0
        except subprocess.TimeoutExpired:
            Run.stop(proc)
            f.write(f"\ngpu-check: {label} ended after {timeout} s (--build-timeout)\n")
            ok = False
    seconds = round(time.monotonic() - start, 1)
    print(f"install {label}: {'ok' if ok else 'FAILED'} in {seconds} s", flush=True)
    if not ok:  # the step's own last lines, so that a failure says why where it is reported
        with open(log, "rb") as f:
            f.seek(begins)
            said = f.read().decode(errors="replace")
        print("".join(_tail(said or "(it printed nothing)\n")), end="", flush=True)
    return label, ok, seconds


def make_venv(venv, log):
    """A venv over this Python's packages (the machine's torch above all). Where this Python is a venv
    itself (the GPU machine's /opt/torch/.venv), --system-site-packages gives the new one only its base's
    packages: a .pth file there adds this Python's own site-packages (editable installs' .pth files too)."""
    step = _timed("venv", [sys.executable, "-m", "venv", "--system-site-packages", venv], log)
    if step[1] and sys.prefix != sys.base_prefix:
        code = "import sys; print(next(p for p in sys.path if p.endswith('site-packages')))"
        own = subprocess.run([Path(venv) / "bin" / "python", "-c", code], capture_output=True, text=True, check=True)
        lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages())
        (Path(own.stdout.strip()) / "_gpu_check_parent_venv.pth").write_text(lines)
    return step


def _cuda_arch(python):
    """The GPU's compute capability as TORCH_CUDA_ARCH_LIST wants it (9.0 on an H200)."""
    code = "import torch; print('%d.%d' % torch.cuda.get_device_capability())"
    result = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return result.stdout.strip() or "9.0"


def _build_mmcv(python, wheels, built, log, cuda, timeout):
    """envs/build_mmcv.sh, offline: pip reads the carried sdist and setuptools through PIP_FIND_LINKS."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "MAX_JOBS": str(os.cpu_count())}
    if cuda:
        env.update(FORCE_CUDA="1", TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST") or _cuda_arch(python))
    return _timed("mmcv build", ["bash", REPO / "envs" / "build_mmcv.sh", python, built], log, timeout, env)


def _cap(log, keep=4 * MIB):
    """Keep a log's last `keep` bytes (nvcc's warnings run to megabytes; 16 MiB a file comes back)."""
    if log.exists() and log.stat().st_size > 2 * keep:
        with open(log, "rb") as f:
            f.seek(-keep, os.SEEK_END)
            tail = f.read()
        log.write_bytes(b"[... earlier lines cut ...]\n" + tail)


def _install_log(folder, out):
    log = Path(out) / "install.log" if out else Path(folder) / "install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return log


def _pip(python):
    return [python, "-m", "pip", "install", "--no-index", "--no-deps", "--no-cache-dir", "--quiet"]


def install_base(folder, venv, log):
    """The venv of a run without mmcv: the carried wheels and flatmix editable, then an import check."""
    folder, venv = Path(folder).resolve(), Path(venv).resolve()
    python = venv / "bin" / "python"
    steps = [make_venv(venv, log)]
    carried = [p for p in sorted((folder / "wheels").glob("*.whl"))
               if not p.name.startswith(("setuptools-", "mmcv-"))]  # setuptools: mmcv's build only
    if carried:
        steps.append(_timed("wheels", [*_pip(python), *carried], log))
    steps.append(_timed("flatmix", [*_pip(python), "--no-build-isolation", "-e", REPO], log))
    check = ("import mmdet, mmengine, pycocotools, flatmix, torch; "
             "print('mmdet', mmdet.__version__, 'mmengine', mmengine.__version__, 'torch', torch.__version__)")
    steps.append(_timed("import check", [python, "-c", check], log))
    return steps


def install_mmcv(python, folder, cuda, log, out=None, build_timeout=None):
    """mmcv into `python`'s venv: a carried prebuilt wheel (FOLDER/wheels), else one built from the carried
    sdist into FOLDER/built (copied to OUT, to be carried next time), then its ops imported."""
    folder = Path(folder).resolve()
    wheels, built = folder / "wheels", folder / "built"
    steps = []
    mmcv = sorted(wheels.glob("mmcv-*.whl")) or sorted(built.glob("mmcv-*.whl"))
    if not mmcv:
        steps.append(_build_mmcv(python, wheels, built, log, cuda, build_timeout))
        mmcv = sorted(built.glob("mmcv-*.whl"))
    if mmcv:
        steps.append(_timed("mmcv", [*_pip(python), mmcv[-1]], log))
        if out and mmcv[-1].parent == built and mmcv[-1].stat().st_size < 16 * MIB:
            shutil.copy(mmcv[-1], out)  # carried back next time, it spares the build
    steps.append(_timed("mmcv import check", [python, "-c", MMCV_CHECK], log))
    return steps


def install(folder, venv, device, out, with_mmcv=True, build_timeout=None):
    """The venv of a run: install_base, then install_mmcv unless left out (every stage but detection
    runs without it). Writes OUT/install.json."""
    log = _install_log(folder, out)
    steps = install_base(folder, venv, log)
    if with_mmcv and all(ok for _, ok, _ in steps):
        python = Path(venv).resolve() / "bin" / "python"
        steps += install_mmcv(python, folder, device == "cuda", log, out, build_timeout)
    _cap(log)
    if out:
        (Path(out) / "install.json").write_text(json.dumps(
            [{"step": label, "ok": ok, "seconds": seconds} for label, ok, seconds in steps], indent=1))
    if not all(ok for _, ok, _ in steps):
        print(f"install: failed; the log is {log}:\n" + "".join(_tail(log.read_text(), 40)), file=sys.stderr)
        return 1
    return 0


# ----------------------------------------------------------------------------------------------- run

@dataclass
class Sizes:
    """How big each stage is: a few minutes in all on an H200, or on 2 CPU cores with --tiny."""
    train_images: int = 6400        # ImageNet-shaped JPEGs over the 100 ImageNet-100 classes
    val_images: int = 1000
    synth_size: int = 256           # `flatmix synth --size`: detection images are 2-4x this
    det_images: int = 8             # images per VOC and COCO split
    image_size: int = 224
    batch: int = 64
    K: int = 4096
    epochs: int = 1                 # pretraining: train_images / batch steps per epoch
    log_every: int = 10
    workers: int = 4                # loader workers per concurrent run
    precision: str = "bf16"
    arch_small: str = ""            # "" keeps each preset's ResNet-50
    linear_epochs: int = 2
    linear_batch: int = 256
    cifar_train: int = 10240        # random CIFAR-10 records: 20 steps of the recipe's batch 512
    cifar_val: int = 2000
    cifar_batch: int = 512
    cifar_workers: int = 12         # the pil loader's, alone on the machine (16 cores) so the GPU sets the pace
    det_scale: str = "paper"
    # `flatmix bench pretrain` arguments; a real loader's steps and warmup are its steady-state least, which
    # costs about 42 x batch / (pairs/s of one worker) seconds a row whatever the workers (bench.STEADY_STEPS):
    # the pil bench at batch 64 (about 18 s a row), the gpu loader with 4 workers (its GPU thread decodes).
    # CMC as flatmix.plan prices it: two R50-half, batch 128 (its K is the bench's, at most 16384).
    bench: list = field(default_factory=lambda: ["--arch", "resnet50", "--batch-size", "256", "--precision", "bf16",
                                                 "-K", "65536"])
    bench_extra: dict = field(default_factory=lambda: {  # by stage name, after `bench`
        "bench-pil": ["--batch-size", "64"], "bench-gpu": ["--workers", "4"],
        "bench-synthetic-cmc": ["--arch", "resnet50half", "--batch-size", "128"]})
    skip: dict = field(default_factory=dict)  # stage: why it is left out at these sizes


# On 2 CPU cores every detection run costs ~30 s, mostly mmdetection's start: the tiny run keeps one per
# data set (the torchrun path and the plain one, the VOC and both COCO evaluators), and one pretraining run
# per method (the region mixture runs in pretrain-sigterm-resume); the others are the same stage code with
# another task, BN mode, mixture or loader, run in full on CUDA.
_SAME_CODE = "on 2 CPU cores the tiny run keeps the test within minutes; the same stage code runs as {}"
TINY_SKIPS = {"pretrain-moco-region": _SAME_CODE.format("pretrain-moco-global and pretrain-sigterm-resume"),
              "pretrain-cmc-region": _SAME_CODE.format("pretrain-cmc-global"),
              "detect-faster-rcnn-frozen": _SAME_CODE.format("detect-mask-rcnn-frozen"),
              "detect-retinanet-train": _SAME_CODE.format("detect-faster-rcnn-train"),
              "detect-retinanet-frozen": _SAME_CODE.format("detect-mask-rcnn-frozen"),
              "detect-mask-rcnn-train": _SAME_CODE.format("detect-faster-rcnn-train"),
              "bench-gpu": _SAME_CODE.format("bench-pil (and every pretrain stage uses the GPU loader)")}


TINY = Sizes(train_images=100, val_images=100, synth_size=32, det_images=2, image_size=32, batch=16, K=64,
             log_every=1, workers=0, precision="fp32", arch_small="resnet_tiny", linear_epochs=1, linear_batch=32,
             cifar_train=40, cifar_val=10, cifar_batch=16, cifar_workers=0,
             det_scale="smoke",
             bench=["--arch", "resnet_tiny", "--batch-size", "8", "--image-size", "32", "--precision", "fp32",
                    "-K", "64", "--steps", "2", "--warmup", "1", "--workers", "0"], bench_extra={}, skip=TINY_SKIPS)


class StageFailed(Exception):
    """A stage's command or check went wrong; the message is the summary's reason."""


class Skip(Exception):
    """A stage that cannot run here (a CPU, one GPU): the message is the reason."""


@dataclass
class Result:
    stage: str
    status: str = "not run"
    seconds: float = 0.0
    numbers: str = ""
    tail: list = field(default_factory=list)


class Run:
    """One `gpu-check run`: the sizes, the work folder, each stage's log and result, the deadline."""

    def __init__(self, out, work, device, sizes, deadline_s, jobs, mmcv_from=None):
        self.out, self.work, self.device, self.sizes, self.jobs = Path(out), Path(work), device, sizes, jobs
        self.mmcv_from = mmcv_from
        self.bin = Path(sys.executable).parent
        self.deadline = time.monotonic() + deadline_s
        self.results, self.lock = {}, threading.Lock()
        self.background = {}  # stage name: the Future of a BACKGROUND stage
        (self.work / "logs").mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)

    def log(self, stage):
        return self.work / "logs" / f"{stage}.log"

    def flatmix(self, *args, torchrun=False):
        """argv of the real CLI: the console script, or under torchrun as the pretrain rule starts it
        (flatmix-torchrun, `--nproc_per_node=1 -m flatmix`)."""
        head = ([self.bin / "flatmix-torchrun", "--standalone", "--nproc_per_node=1", "-m", "flatmix"]
                if torchrun else [self.bin / "flatmix"])
        return [str(a) for a in (*head, *args)]

    def remaining(self):
        return self.deadline - time.monotonic()

    def background_running(self):
        return any(not future.done() for future in self.background.values())

    def wait_background(self, names=None):
        """Until the BACKGROUND stages named (default: all) have ended, or the deadline."""
        for name, future in self.background.items():
            if names is None or name in names:
                try:
                    future.result(timeout=max(0.0, self.remaining()))
                except TimeoutError:
                    pass

    def sh(self, stage, argv, env=None):
        """Run argv with its output appended to the stage's log; returns stdout; raises StageFailed."""
        proc = self.start(stage, argv, env)
        try:
            proc.wait(timeout=max(1.0, self.remaining()))
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise StageFailed("out of time (--deadline-s)") from None
        return self.finish(stage, proc)

    def start(self, stage, argv, env=None):
        """Start argv in its own session (so that a timeout ends it and its children), stdout to a file."""
        with open(self.log(stage), "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
        stdout = open(self.log(stage).with_suffix(".stdout"), "w")
        stderr = open(self.log(stage), "a")
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, text=True, start_new_session=True,
                                env={**os.environ, **(env or {})})
        stdout.close(), stderr.close()
        return proc

    def finish(self, stage, proc):
        """The finished command's stdout, appended to the log too; raises StageFailed on a non-zero exit."""
        stdout = self.log(stage).with_suffix(".stdout").read_text()
        with open(self.log(stage), "a") as log:
            log.write(stdout)
        if proc.returncode != 0:
            raise StageFailed(f"exit status {proc.returncode}")
        return stdout

    @staticmethod
    def stop(proc):
        """End a command we started, and its children: SIGTERM to its session, SIGKILL after 20 s."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=wait)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    def record(self, result):
        with self.lock:
            self.results[result.stage] = result
            self.write_json()

    def write_json(self):
        """OUT/gpu-check.json after every stage, so that a run cut short still leaves its summary."""
        body = {"device": self.device, "sizes": vars(self.sizes), "work": str(self.work),
                "stages": [vars(r) for r in _in_order(self.results.values())]}
        tmp = self.out / "gpu-check.json.tmp"
        tmp.write_text(json.dumps(body, indent=1))
        tmp.replace(self.out / "gpu-check.json")


def _tail(text, lines=TAIL_LINES):
    return [line + "\n" for line in text.splitlines()[-lines:]]


def _last_json(stdout):
    """The last JSON object line a flatmix command printed (its summary)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise StageFailed("printed no JSON summary")
    return json.loads(lines[-1])


def _json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------------------------------ stages
# Each stage is a function of the Run that returns its key numbers (a short string), raises StageFailed
# or Skip. Paths under run.work; the pretraining runs are named like the stages that make them.

def stage_data_imagenet(run):
    """ImageNet-shaped JPEGs (train and val) over ImageNet-100's classes, prepared as `prepare` does."""
    s, w = run.sizes, run.work
    run.sh("data-imagenet", run.flatmix("bench", "jpegs", "--out", w / "jpegs", "--images", s.train_images,
                                        "--classes", 100))
    run.sh("data-imagenet", run.flatmix("bench", "jpegs", "--out", w / "jpegs-val", "--images", s.val_images,
                                        "--classes", 100, "--seed", 1))
    (w / "imagenet").mkdir(exist_ok=True)
    for split, source in (("train", w / "jpegs" / "train"), ("val", w / "jpegs-val" / "train")):
        if not (w / "imagenet" / split).exists():
            (w / "imagenet" / split).symlink_to(source)
    summary = _last_json(run.sh("data-imagenet", run.flatmix("prepare", "imagenet100", "--imagenet-root",
                                                             w / "imagenet", "--out", w / "in100")))
    return f"{summary['classes']} classes, {summary['train_images']} train and {summary['val_images']} val images"


def stage_data_detection(run):
    """The embedded data set at a larger size, its VOCdevkit and COCO root checked by `prepare`."""
    s, w = run.sizes, run.work
    run.sh("data-detection", run.flatmix("synth", "--out", w / "synth", "--size", s.synth_size, "--train-per-class", 1,
                                         "--val-per-class", 1, "--voc-images", s.det_images,
                                         "--coco-images", s.det_images))
    run.sh("data-detection", run.flatmix("prepare", "voc", "--root", w / "synth" / "VOCdevkit", "--out", w / "voc"))
    run.sh("data-detection", run.flatmix("prepare", "coco", "--root", w / "synth" / "coco", "--out", w / "coco"))
    return f"VOC and COCO, {s.det_images} images per split, side {s.synth_size}-{4 * s.synth_size}"


def _pretrain_args(run, name, method, mixture, epochs, small, workers=None):
    """`flatmix pretrain` of one run: the smoke preset at these sizes, GPU loader, bf16 on CUDA."""
    s = run.sizes
    workers = s.workers if workers is None else workers
    sets = [f"data.root={run.work / 'in100'}", "data.loader=gpu", f"data.workers={workers}",
            f"data.image_size={s.image_size}", f"train.batch_size={s.batch}", f"train.epochs={epochs}",
            "train.milestones=[]", f"train.precision={s.precision}", f"train.channels_last={run.device == 'cuda'}",
            f"train.log_every={s.log_every}", f"moco.K={s.K}", f"cmc.K={s.K}", *mixture]
    if small and s.arch_small:
        sets.append(f"model.arch={s.arch_small}")
    args = ["pretrain", "--preset", f"smoke-{method}", "--out", run.work / "pretrain" / name]
    for item in sets:
        args += ["--set", item]
    return run.flatmix(*args, torchrun=True)


def _pretrain_numbers(run, name, summary):
    records = [json.loads(line) for line in (run.work / "pretrain" / name / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in records if "loss" in m]  # the kNN monitor's lines carry knn_top1 instead
    pairs = max(m["pairs_per_s"] for m in metrics)
    knn = [m["knn_top1"] for m in records if "knn_top1" in m]
    return (f"{len(metrics)} log lines, final loss {summary['final_loss']:.3f}, up to {pairs:,.0f} pairs/s"
            + (f", kNN top-1 {knn[-1]:.1f}%" if knn else ""))


def pretrain_stage(method, level):
    """A pretraining run under torchrun with one mixture level. moco-global feeds the later stages, so it
    keeps ResNet-50 on the CPU too (mmdetection's ResNet and FPN, detectron2's converter need its widths)."""
    name = f"pretrain-{method}-{level}"

    def stage(run):
        mixture = GLOBAL_MIX if level == "global" else REGION_MIX
        small = name != "pretrain-moco-global"
        summary = _last_json(run.sh(name, _pretrain_args(run, name, method, mixture, run.sizes.epochs, small)))
        return _pretrain_numbers(run, name, summary)
    stage.__name__ = name
    return stage


def stage_pretrain_sigterm_resume(run):
    """MoCo with both mixtures and loader workers: SIGTERM to torchrun's whole process group mid-run (as
    SLURM pre-emption signals a step), which must leave last.pth mid-way and exit 143; the same command then
    resumes to completion, each step logged once."""
    import torch
    name, epochs = "pretrain-sigterm-resume", 2
    folder = run.work / "pretrain" / name
    argv = _pretrain_args(run, name, "moco", GLOBAL_MIX + REGION_MIX, epochs, True, max(run.sizes.workers, 2))
    proc = run.start(name, argv)
    metrics = folder / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        if proc.poll() is not None:
            raise StageFailed(f"the run ended (status {proc.returncode}) before 3 metrics lines")
        if run.remaining() < 0:
            run.stop(proc)
            raise StageFailed("out of time (--deadline-s)")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, loader workers too, as SLURM signals a step
    status = proc.wait(timeout=max(1.0, run.remaining()))
    if status != 143:
        raise StageFailed(f"SIGTERM ended the run with status {status}, not 143")
    try:
        run.finish(name, proc)  # its output into the log; a pre-empted run exits non-zero
    except StageFailed:
        pass
    if (folder / "checkpoint.pth").exists():
        raise StageFailed("the run finished before SIGTERM reached it")
    last = torch.load(folder / "last.pth", map_location="cpu", weights_only=True)
    stopped = (last["epoch"], last["step"])
    summary = _last_json(run.sh(name, argv))
    steps = [(m["epoch"], m["step"]) for m in map(json.loads, metrics.read_text().splitlines()) if "loss" in m]
    if len(steps) != len(set(steps)) or summary["epochs"] != epochs:
        raise StageFailed(f"the resumed run logged some steps twice or ended early: {steps}")
    return f"SIGTERM -> exit {status}, last.pth at epoch {stopped[0]} step {stopped[1]}; resumed to {steps[-1]}, " \
           f"final loss {summary['final_loss']:.3f}"


def _checkpoint(run, name="pretrain-moco-global"):
    return run.work / "pretrain" / name / "checkpoint.pth"


def stage_convert(run):
    """The MoCo checkpoint for torchvision, mmdetection and detectron2."""
    sizes = []
    for target, suffix in (("torchvision", "pth"), ("mmdet", "pth"), ("detectron2", "pkl")):
        out = run.work / "convert" / f"{target}.{suffix}"
        out.parent.mkdir(exist_ok=True)
        run.sh("convert", run.flatmix("convert", _checkpoint(run), "--to", target, "--out", out))
        sizes.append(f"{target} {out.stat().st_size / MIB:.0f} MiB")
    return ", ".join(sizes)


def stage_linear(run):
    """The probe on the 100-step backbone, with the smoke preset's probe settings (config.yaml
    smoke.linear: --feature-norm, its lr; no milestones): the protocol's lr 10 on unnormalised features
    of so short a run diverges. A diverged probe is a failed stage with its losses, never a crash."""
    from flatmix.workflow_config import load_config
    s, lr = run.sizes, load_config(REPO / "config.yaml")["smoke"]["linear"]["lr"]
    run.sh("linear", run.flatmix(
        "linear", "--backbone", _checkpoint(run), "--data", run.work / "in100", "--out", run.work / "linear",
        "--epochs", s.linear_epochs, "--batch-size", s.linear_batch, "--image-size", s.image_size,
        "--workers", s.workers, "--feature-norm", "--lr", lr, "--milestones", ""))
    summary = json.loads((run.work / "linear" / "metrics.json").read_text())
    losses = " -> ".join("nan" if h["loss"] is None else f"{h['loss']:.3f}" for h in summary["history"])
    if summary["diverged"]:
        raise StageFailed(f"the probe diverged (epoch losses {losses}) at lr {lr} with --feature-norm")
    return f"top-1 {summary['top1']:.2f}, top-5 {summary['top5']:.2f} (chance {100 / summary['classes']:.2f}) " \
           f"after {summary['epochs']} epoch(s), loss {losses}; feature-norm probe, lr {lr}"


def stage_flatness(run):
    s = run.sizes
    summary = _last_json(run.sh("flatness", run.flatmix(
        "flatness", "--backbone", f"moco={_checkpoint(run)}", "--backbone", f"cmc={_checkpoint(run, 'pretrain-cmc-global')}",
        "--data", run.work / "in100", "--out", run.work / "flatness", "--image-size", s.image_size,
        "--batch-size", s.linear_batch, "--workers", s.workers)))
    return "max probability " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())


def stage_mmcv(run):
    """mmcv's ops in this venv. With --mmcv-from DIR (`gpu-check all`) it is installed from DIR, built there
    from the carried sdist when no wheel is carried, in the background while the stages that do not need
    it run; otherwise the venv's own mmcv is imported."""
    python = Path(sys.executable)
    if run.mmcv_from is None:
        return run.sh("mmcv", [str(python), "-c", MMCV_CHECK]).strip()
    steps = install_mmcv(python, run.mmcv_from, run.device == "cuda", run.log("mmcv"), run.out,
                         build_timeout=max(1.0, run.remaining()))
    if failed := [label for label, ok, _ in steps if not ok]:
        raise StageFailed(f"{', '.join(failed)} failed: the log's last lines say why")
    return ", ".join(f"{label} {seconds:.0f} s" for label, _, seconds in steps)


def detect_stage(task, bn):
    """One detection fine-tune and its evaluator. BN train runs under torchrun (one process: mmengine's
    launcher and DDP wrapper; see stage_detect_syncbn for SyncBN)."""
    name = f"detect-{task.removeprefix('coco-').removeprefix('voc-')}-{bn}"

    def stage(run):
        data = run.work / "synth" / ("VOCdevkit" if task.startswith("voc") else "coco")
        out = run.work / "detect" / name
        run.sh(name, run.flatmix("detect", task, "--backbone", _checkpoint(run), "--data", data, "--bn", bn,
                                 "--out", out, "--scale", run.sizes.det_scale, torchrun=bn == "train"))
        metrics = json.loads((out / "metrics.json").read_text())
        shown = {k: v for k, v in metrics.items() if k in ("AP50", "recall", "bbox_AP", "mask_AP")}
        return ", ".join(f"{k} {v:.1f}" for k, v in shown.items()) + f" ({metrics['scale']} scale, {metrics['wall_time_s']} s)"
    stage.__name__ = name
    return stage


def stage_detect_syncbn(run):
    """SyncBN needs two processes on two GPUs: the runner picks it only when WORLD_SIZE > 1 (on CUDA),
    and NCCL refuses two ranks on one GPU."""
    if run.device != "cuda":
        raise Skip("cpu: SyncBN needs CUDA (the detect runner uses plain BN on CPUs)")
    import torch
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise Skip(f"{gpus} GPU: SyncBN needs WORLD_SIZE > 1, and NCCL refuses two ranks on one GPU")
    out = run.work / "detect" / "syncbn"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "-m", "flatmix",
            "detect", "voc-faster-rcnn", "--backbone", str(_checkpoint(run)), "--data", str(run.work / "synth" / "VOCdevkit"),
            "--bn", "train", "--out", str(out), "--scale", run.sizes.det_scale]
    run.sh("detect-syncbn", argv)
    if "SyncBN" not in (out / "config.py").read_text():
        raise StageFailed("config.py has no SyncBN")
    return f"{gpus} processes, AP50 {json.loads((out / 'metrics.json').read_text())['AP50']:.1f}"


def bench_stage(loader, compiled, method="moco"):
    """`flatmix bench pretrain`: the R50 MoCo (or CMC) step, without and with the mixtures; a real loader is
    timed alone first. Synthetic runs under torchrun (NCCL on CUDA), as tests/test_gpu.py does."""
    name = f"bench-{loader}" + ("-compiled" if compiled else "") + ("" if method == "moco" else f"-{method}")

    def stage(run):
        if compiled and run.device != "cuda":
            raise Skip("cpu: torch.compile timings mean nothing on a CPU and cost minutes of compiling")
        args = ["bench", "pretrain", "--method", method, *run.sizes.bench, *run.sizes.bench_extra.get(name, []),
                "--device", run.device, "--config", REPO / "config.yaml"]
        if loader != "synthetic":
            args += ["--loader", loader, "--data", run.work / "jpegs"]
        beside = " (beside mmcv's build)" if run.background_running() else ""
        lines = _json_lines(run.sh(name, run.flatmix(*args, *(["--compile"] if compiled else []),
                                                     torchrun=loader == "synthetic")))
        steps = [r for r in lines if r["stage"] in ("loader", "train")]
        mixer = [r for r in lines if r["stage"] == "mixer"]
        parts = [r for r in lines if r["stage"] == "loader_parts"]
        if not steps or not all(r["pairs_per_s"] > 0 for r in steps) or len(mixer) != 1:
            raise StageFailed("no pairs/s measured, or no mixer row")
        if len(parts) != (loader == "gpu"):
            raise StageFailed(f"{len(parts)} loader_parts rows from the {loader} loader")
        label = {("loader", False): "loader", ("train", False): "step", ("train", True): "step+mix"}
        rows = ", ".join(f"{label[r['stage'], r['mixture']]} {r['pairs_per_s']:,.0f} (data-wait {r['data_wait']:.0%})"
                         for r in steps)
        first, mixer = steps[0], mixer[0]
        for p in parts:  # where the gpu loader's time goes: its workers against its device parts
            rows += (f"; its parts per batch: workers {p['workers_s_median'] * 1e3:.1f} ms "
                     f"({p['workers_pairs_per_s']:,.0f} pairs/s), on the device decode {p['decode_s_median'] * 1e3:.1f}"
                     f" + resize {p['resize_s_median'] * 1e3:.1f} + colour {p['colour_s_median'] * 1e3:.1f} ms "
                     f"({p['device_pairs_per_s']:,.0f} pairs/s)")
        return f"{rows}; the mixer {mixer['step_share']:.1%} of the mixed step " \
               f"({mixer['ratio_to_copy']:.1f}x a copy); batch {first['batch_size']}, {first['workers']} workers, " \
               f"{first['steps']} steps after {first['warmup']}{beside}"
    stage.__name__ = name
    return stage


CIFAR_IMAGES = 50_000  # CIFAR's training set, to project an epoch from the measured rate


def _cifar_binary(folder, train, val):
    """CIFAR-10's binary layout with random records (labels cycling through the 10 classes): the 5
    training files share `train` records, test_batch.bin holds `val`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "batches.meta.txt").write_text("\n".join(f"class{c}" for c in range(10)) + "\n")
    files = [(f"data_batch_{i}.bin", range(i - 1, train, 5)) for i in range(1, 6)] + [("test_batch.bin", range(val))]
    for name, records in files:
        (folder / name).write_bytes(b"".join(bytes([r % 10]) + os.urandom(3 * 32 * 32) for r in records))


def stage_cifar(run):
    """The CIFAR recipe on this device: random CIFAR-10 records through `prepare cifar10`, then one epoch of
    preset cifar10's symmetric row exactly as `flatmix plan --commands` gives it (ResNet-18, SplitBatchNorm,
    the pil loader, its kNN monitor): the rate flatmix.plan's V100 figures stand in for until measured."""
    s, w = run.sizes, run.work
    _cifar_binary(w / "cifar-10-batches-bin", s.cifar_train, s.cifar_val)
    config = w / "cifar.yaml"  # JSON is YAML
    config.write_text(json.dumps({"preset": "cifar10", "results": str(w / "results"),
                                  "data": {"cifar10": str(w / "cifar-10-batches-bin")},
                                  "cifar": {"epochs": 1, "batch_size": s.cifar_batch, "runs": ["symmetric"],
                                            "pretrain": {"gpus": 1, "nodes": 1, "workers": s.cifar_workers,
                                                         "knn_every": 1}}}))
    run.sh("cifar", run.flatmix("prepare", "cifar10", "--root", w / "cifar-10-batches-bin",
                                "--out", w / "results" / "data" / "prepared" / "cifar10"))
    line = run.sh("cifar", run.flatmix("plan", "--config", REPO / "config.yaml", "--config", config, "--commands"))
    command = shlex.split(line.splitlines()[0], comments=True)  # flatmix pretrain --set ... --out ...
    summary = _last_json(run.sh("cifar", run.flatmix(*command[1:])))
    out = Path(command[command.index("--out") + 1])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if "pairs_per_s" in r), key=lambda r: r["pairs_per_s"])
    pairs = best["pairs_per_s"]
    return (f"symmetric ResNet-18 CIFAR at batch {s.cifar_batch}, {s.cifar_workers} pil workers: up to {pairs:,.0f} "
            f"pairs/s (data-wait {best['data_wait']:.0%}), a 50,000-image epoch "
            f"in {CIFAR_IMAGES / pairs:.1f} s (--cifar-pairs-per-s {2 * pairs:,.0f}: the plan's is asymmetric; the "
            f"demo's V100 about 20 s an asymmetric epoch), kNN top-1 {summary['knn_top1']:.1f}%")


@dataclass
class Phase:
    """Stages run together (side by side, or one by one when `alone`: the benchmarks), after the phases
    before them; `needs`: the stages each needs, by name pattern."""
    stages: list
    needs: dict = field(default_factory=dict)
    alone: bool = False
    after_background: bool = False  # wait for the BACKGROUND stages first (a CPU-bound bench and a compiler)


# mmcv builds (on the GPU machine, 3-4 minutes with 16 jobs) while the stages that do not need it run. The
# synthetic benches (GPU-bound, data already there) run alone on the GPU during the build, the loader
# benches (CPU-bound) after it; detection waits for it.
BACKGROUND = [stage_mmcv]
PHASES = [
    Phase([stage_data_imagenet, stage_data_detection]),
    Phase([pretrain_stage("moco", "global"), pretrain_stage("moco", "region"), pretrain_stage("cmc", "global"),
           pretrain_stage("cmc", "region"), stage_pretrain_sigterm_resume], {"*": ["data-imagenet"]}),
    Phase([stage_convert, stage_linear, stage_flatness],
          {"*": ["pretrain-moco-global"], "flatness": ["pretrain-moco-global", "pretrain-cmc-global"]}),
    Phase([bench_stage("synthetic", False), bench_stage("synthetic", True), bench_stage("synthetic", False, "cmc")],
          alone=True),
    Phase([*[detect_stage(task, bn) for task in ("voc-faster-rcnn", "coco-retinanet", "coco-mask-rcnn")
             for bn in ("train", "frozen")], stage_detect_syncbn],
          {"*": ["mmcv", "pretrain-moco-global", "data-detection"]}),
    Phase([bench_stage("pil", False), bench_stage("gpu", False), bench_stage("gpu", True), stage_cifar],
          {"bench-*": ["data-imagenet"]}, alone=True, after_background=True),
]


def stage_names():
    """Every stage's name, in the table's order."""
    return [_name(stage) for stage in BACKGROUND] + [_name(stage) for phase in PHASES for stage in phase.stages]


def _name(stage):
    return stage.__name__.removeprefix("stage_").replace("_", "-")


def _in_order(results):
    """Results in the stages' order (they finish in any order when run concurrently)."""
    order = stage_names()
    return sorted(results, key=lambda r: order.index(r.stage))


def _needs(name, needs):
    """The stages `name` needs, by the most specific matching pattern of its phase."""
    for pattern in sorted(needs, key=len, reverse=True):
        if pattern == name or (pattern.endswith("*") and name.startswith(pattern[:-1])):
            return needs[pattern]
    return []


def run_stage(run, stage, needs):
    """One stage: skipped when a stage it needs did not succeed or time is up, else timed and recorded."""
    name = _name(stage)
    result = Result(name)
    run.wait_background(needs)
    missing = [n for n in needs if run.results.get(n, Result(n)).status != "ok"]
    start = time.monotonic()
    try:
        if missing:
            raise Skip(f"needs {', '.join(missing)}")
        if name in run.sizes.skip and run.device == "cpu":
            raise Skip(f"cpu: {run.sizes.skip[name]}")
        if run.remaining() < 10:
            raise Skip("out of time (--deadline-s)")
        result.numbers = stage(run) or ""
        result.status = "ok"
    except Skip as e:
        result.status = f"skipped ({e})"
    except Exception as e:  # a failing stage is recorded and the others go on
        result.status = "failed"
        result.numbers = f"{type(e).__name__}: {e}" if not isinstance(e, StageFailed) else str(e)
    result.seconds = round(time.monotonic() - start, 1)
    if run.log(name).exists():
        result.tail = _tail(run.log(name).read_text())
    run.record(result)
    print(f"gpu-check: {name} {result.status} in {result.seconds} s {result.numbers}", flush=True)


def run_phase(run, phase, stages):
    if phase.after_background:
        run.wait_background()
    with ThreadPoolExecutor(max_workers=1 if phase.alone else run.jobs) as pool:
        for future in [pool.submit(run_stage, run, s, _needs(_name(s), phase.needs)) for s in stages]:
            future.result()


def table(results):
    """The summary: stage, status, seconds, key numbers; one line each."""
    rows = [("stage", "status", "seconds", "key numbers")] + [
        (r.stage, r.status, f"{r.seconds:.1f}", r.numbers) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def combined_log(run):
    """Every stage's log in one file, in stage order (at most 8 files come back from the machine)."""
    with open(run.out / "gpu-check.log", "w") as out:
        for result in _in_order(run.results.values()):
            out.write(f"\n===== {result.stage}: {result.status} ({result.seconds} s)\n")
            if run.log(result.stage).exists():
                text = run.log(result.stage).read_text(errors="replace")
                out.write(text if len(text) < MIB else "[... earlier lines cut ...]\n" + text[-MIB:])


def selected(stage, only, skip):
    name = _name(stage)
    return (not only or any(name.startswith(p) for p in only)) and not any(name.startswith(p) for p in skip)


def run_all(args):
    device = args.device or ("cuda" if _has_cuda() else "cpu")
    sizes = TINY if args.tiny else Sizes()
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
    run = Run(args.out, work, device, sizes, args.deadline_s, args.jobs or (6 if device == "cuda" else 2),
              args.mmcv_from)
    start = time.monotonic()
    print(f"gpu-check: device {device}, {'tiny' if args.tiny else 'full'} sizes, work folder {work}", flush=True)
    with ThreadPoolExecutor(max_workers=len(BACKGROUND)) as background:
        for stage in BACKGROUND:
            if selected(stage, [], args.skip):  # what a selected stage needs: --only does not leave it out
                run.background[_name(stage)] = background.submit(run_stage, run, stage, [])
        for phase in PHASES:
            run_phase(run, phase, [s for s in phase.stages if selected(s, args.only, args.skip)])
    combined_log(run)
    print(f"\n{table(_in_order(run.results.values()))}\n\ngpu-check: {time.monotonic() - start:.0f} s in all; "
          f"{run.out / 'gpu-check.json'}, {run.out / 'gpu-check.log'}")
    bad = [r for r in run.results.values() if r.status == "failed" or r.status.startswith("skipped (needs")]
    return 1 if bad else 0


def check_all(args):
    """install_base here, then `run` in the venv it made, mmcv installed from DIR alongside the first
    stages: the whole check in one command, within one deadline counted from its start."""
    start = time.monotonic()
    folder = Path(args.dir).resolve()
    log = _install_log(folder, args.out)
    steps = install_base(folder, folder / "venv", log)
    (Path(args.out) / "install.json").write_text(json.dumps(
        [{"step": label, "ok": ok, "seconds": seconds} for label, ok, seconds in steps], indent=1))
    if not all(ok for _, ok, _ in steps):
        print(f"gpu-check all: the install failed; the log is {log}", file=sys.stderr)
        return 1
    left = args.deadline_s - (time.monotonic() - start)
    argv = [folder / "venv" / "bin" / "python", Path(__file__).with_name("gpu-check"), "run", "--out", args.out,
            "--mmcv-from", folder, "--deadline-s", f"{left:.0f}"]
    for flag, value in (("--device", args.device), ("--work", args.work), ("--jobs", args.jobs)):
        if value is not None:
            argv += [flag, value]
    argv += ["--tiny"] if args.tiny else []
    argv += [arg for prefix in args.only for arg in ("--only", prefix)]
    argv += [arg for prefix in args.skip for arg in ("--skip", prefix)]
    return subprocess.call(list(map(str, argv)))


def _has_cuda():
    import torch
    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------ main

def _run_options(p, deadline_from="the start"):
    p.add_argument("--out", required=True, help="gpu-check.json and gpu-check.log go here")
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: CUDA where there is one")
    p.add_argument("--tiny", action="store_true", help="CPU sizes: a few minutes on 2 cores")
    p.add_argument("--work", help="folder for data, runs and logs (default: a new temporary folder)")
    p.add_argument("--jobs", type=int, help="stages run at once (default: 6 on CUDA, 2 on a CPU)")
    p.add_argument("--deadline-s", type=float, default=540,
                   help=f"seconds from {deadline_from} after which later stages are skipped (default: %(default)s)")
    p.add_argument("--only", action="append", default=[], metavar="PREFIX", help="only stages named so (repeatable)")
    p.add_argument("--skip", action="append", default=[], metavar="PREFIX", help="leave out stages named so")


def _parser():
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="here, with network: download what the GPU machine lacks into DIR")
    p.add_argument("dir")
    p = commands.add_parser("install", help="there, offline: DIR/venv with the carried wheels, mmcv, flatmix")
    p.add_argument("dir")
    p.add_argument("--venv", help="default: DIR/venv")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cuda: mmcv with its CUDA ops")
    p.add_argument("--out", help="also write install.json, install.log (and a built mmcv wheel) here")
    p.add_argument("--no-mmcv", action="store_true", help="leave mmcv out (no build): every stage but detection runs")
    p.add_argument("--build-timeout", type=float, help="end mmcv's build after this many seconds (then the run "
                                                        "goes on without detection)")
    p = commands.add_parser("run", help="every stage through the flatmix CLI of this Python's environment")
    _run_options(p)
    p.add_argument("--mmcv-from", metavar="DIR", help="install mmcv from DIR (`install`'s folder: a carried wheel, "
                                                      "else built from its sdist) while the first stages run")
    p = commands.add_parser("all", help="there, offline: install (mmcv aside) and run, mmcv built alongside the "
                                        "first stages; the whole check in one command")
    p.add_argument("dir", help="the folder `prepare` filled; the venv goes in DIR/venv")
    _run_options(p, deadline_from="the start of the install")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "prepare":
        total = prepare(args.dir)
        if total > CARRY_LIMIT:
            print(f"gpu-check prepare: {total / MIB:.1f} MiB is over the {CARRY_LIMIT // MIB} MiB limit", file=sys.stderr)
            return 1
        return 0
    if args.command == "install":
        return install(args.dir, args.venv or Path(args.dir) / "venv", args.device, args.out, not args.no_mmcv,
                       args.build_timeout)
    if args.command == "all":
        return check_all(args)
    return run_all(args)
