"""Where a result came from: code version, packages, container image and hardware, recorded beside
every metric so the report can link each number to what produced it."""

from importlib import metadata
import os
from pathlib import Path
import platform
import socket
import subprocess

import torch

PACKAGES = ("flatmix", "torch", "torchvision", "mmcv", "mmdet", "mmengine", "pycocotools", "numpy", "snakemake")


def _git_commit():
    """The checkout's commit (with '-dirty' for local changes); in an image, the commit it was built from."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return os.environ.get("FLATMIX_GIT_COMMIT", "unknown")


def _versions():
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _hardware():
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"host": socket.gethostname(), "cpus": os.cpu_count(), "machine": platform.machine(),
            "gpus": gpus, "cuda": torch.version.cuda if gpus else None,
            "slurm_job": os.environ.get("SLURM_JOB_ID")}


def collect():
    """This process's provenance as a JSON-ready dict."""
    return {"git_commit": _git_commit(), "packages": _versions(), "python": platform.python_version(),
            # Apptainer and Docker images the rules ran in (unset outside a container)
            "container_image": os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
            or os.environ.get("FLATMIX_IMAGE"),
            "hardware": _hardware()}
