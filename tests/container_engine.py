"""A real container engine for the tests: Debian's podman, and the flatmix image built with the project's own
containers/Dockerfile (CPU flavour) on a Debian bookworm base made here by debootstrap.

`Podman.start()` installs podman, runc and debootstrap when missing (as root) and writes the settings podman
needs on these machines (containers.conf: runc, cgroupfs, no default ulimits; `env` carries CONTAINERS_CONF
to every podman call, the SLURM jobs' included). `flatmix_image()` builds the image once per content: it is
tagged with a hash of what the build reads, so an unchanged image is reused. The build reaches the package
registries the way this machine does (host network, this machine's pip configuration and CA bundle mounted
read-only) and shares this machine's pip cache and mmcv wheel cache through build volumes, so mmcv is not
compiled again. Where podman cannot run, `start()` raises EngineUnavailable with the reason and the tests skip;
where it runs but the Dockerfile does not build, `flatmix_image()` raises ImageBuildFailed and they fail.
"""

import hashlib
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

from conftest import REPO, wheel_cache

PACKAGES = ("podman", "runc", "debootstrap")
CONTAINERS_CONF = """\
# written by flatmix's tests (tests/container_engine.py)
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
BASE = "localhost/flatmix-test-base:bookworm"
IMAGES = "localhost/flatmix-test"  # the tests' own images, labelled LABEL: the only ones they remove
LABEL = "org.flatmix.test-image=1"
# what containers/Dockerfile copies or runs: the image's tag changes with any of it
BUILD_INPUTS = ("containers/Dockerfile", "containers/build.sh", "envs", "pyproject.toml", "README.md", "src",
                "Snakefile", "config.yaml", "workflow")


class EngineUnavailable(Exception):
    """This machine cannot run podman: the tests that need it skip."""


class ImageBuildFailed(Exception):
    """podman runs, but the project's own containers/Dockerfile does not build: a defect, so they fail."""


def _run(*cmd, env=None, timeout=3600, error=EngineUnavailable):
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if result.returncode != 0:
        raise error(f"{' '.join(cmd[:3])} ... failed: {(result.stderr or result.stdout).strip()[-800:]}")
    return result.stdout


def _install():
    if all(shutil.which(b) for b in ("podman", "runc", "debootstrap")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EngineUnavailable("podman/runc/debootstrap are not installed and apt-get cannot install them here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-qq", env=env)
    _run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES, env=env)


def debian_mirror():
    """The Debian mirror this machine's apt sources name for bookworm's main archive."""
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = source.read_text() if source.is_file() else ""
        for match in re.finditer(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+bookworm\s", text, re.M):
            return match.group(1)
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            if uris and re.search(r"^Suites:.*\bbookworm\b", stanza, re.M) and "security" not in uris.group(1):
                return uris.group(1)
    raise EngineUnavailable("no Debian bookworm mirror in this machine's apt sources")


def build_hash():
    """A hash of every file the image's build reads (as .dockerignore filters them)."""
    digest = hashlib.sha256()
    for name in BUILD_INPUTS:
        path = REPO / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or any(part.endswith(".egg-info") for part in f.parts):
                continue
            digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _host_pip_config(folder):
    """This machine's pip configuration for the build: (pip.conf text, read-only volumes). Each local file or
    folder it names (CA bundle, constraints, find-links, file:// indexes) is mounted under /run/host-pip, not at
    its own path: the image installs its own CA bundle where this machine keeps its."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = {}
    for line in listed.splitlines():  # global.cert='...' and :env:.cert='...' (the environment wins)
        match = re.match(r"^(global|:env:)\.([\w-]+)='(.*)'$", line)
        if match and (match.group(1) == ":env:" or match.group(2) not in settings):
            settings[match.group(2)] = match.group(3)
    volumes, mounted = [], {}

    def inside(path):
        if path not in mounted:
            mounted[path] = f"/run/host-pip/{len(mounted)}-{Path(path).name}"
            volumes.append(f"{path}:{mounted[path]}:ro")
        return mounted[path]

    lines = ["[global]"]
    for key, value in settings.items():
        words = []
        for word in value.split():
            if word.startswith("file:///"):  # an index: its parent too, as its pages link to ../files
                local = Path(word.removeprefix("file://"))
                word = f"file://{inside(str(local.parent))}/{local.name}"
            elif word.startswith("/") and Path(word).exists():
                word = inside(word)
            words.append(word)
        lines.append(f"{key} = {' '.join(words)}")
    conf = folder / "pip.conf"
    conf.write_text("\n".join(lines) + "\n")
    return volumes + [f"{conf}:/etc/pip.conf:ro"]


class Podman:
    def __init__(self, root):
        self.root = Path(root)
        self.conf = self.root / "containers.conf"
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def start(self):
        _install()
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(CONTAINERS_CONF)
        self.podman("info")
        return self

    def podman(self, *args, timeout=3600, error=EngineUnavailable):
        return _run("podman", *args, env=self.env, timeout=timeout, error=error)

    def has_image(self, tag):
        return subprocess.run(["podman", "image", "exists", tag], env=self.env).returncode == 0

    def base_image(self):
        """Debian bookworm from debootstrap, imported as BASE (once per machine)."""
        if not self.has_image(BASE):
            rootfs = self.root / "bookworm"
            _run("debootstrap", "--variant=minbase", "bookworm", str(rootfs), debian_mirror(), timeout=1800)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, capture_output=True,
                                      text=True, env=self.env)
            tar.wait()
            if imported.returncode != 0:
                raise EngineUnavailable(f"podman import failed: {imported.stderr.strip()[-500:]}")
            shutil.rmtree(rootfs)
        return BASE

    def flatmix_image(self):
        """The CPU image from containers/Dockerfile on the local base, tagged by build_hash(); built once,
        after which the tests' older images are removed (the layers the new one shares stay)."""
        tag = f"{IMAGES}:{build_hash()}"
        if self.has_image(tag):
            return tag
        base = self.base_image()
        # this machine's caches, where envs/install.sh and pip keep them
        cache = wheel_cache()
        pip_cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True,
                                   text=True).stdout.strip() or Path.home() / ".cache" / "pip"
        volumes = [f"{cache}:/run/build-cache/wheels", f"{pip_cache}:/run/build-cache/pip",
                   *_host_pip_config(self.root)]
        cache.mkdir(parents=True, exist_ok=True)
        Path(pip_cache).mkdir(parents=True, exist_ok=True)
        self.podman("build", "--network", "host", "-f", str(REPO / "containers" / "Dockerfile"), "-t", tag,
                    "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "FORCE_CUDA=0",
                    "--build-arg", "MAX_JOBS=2", "--build-arg", "BUILD_CACHE=/run/build-cache",
                    "--build-arg", f"IMAGE_NAME={tag}", "--build-arg", f"GIT_COMMIT=test-{build_hash()}",
                    "--label", LABEL, *[arg for v in volumes for arg in ("-v", v)], str(REPO), timeout=3600,
                    error=ImageBuildFailed)
        old = self.podman("images", "--filter", f"label={LABEL}", "--format", "{{.Repository}}:{{.Tag}}").split()
        for image in old:  # one still in use by a container stays
            if image.startswith(f"{IMAGES}:") and image != tag:
                subprocess.run(["podman", "rmi", image], capture_output=True, env=self.env)
        return tag

    def apptainer(self, folder, tag):
        """An environment whose `apptainer` runs commands in the podman image `tag` (tests/apptainer_on_podman),
        logging each call to folder/apptainer.log."""
        shutil.copy(REPO / "tests" / "apptainer_on_podman", folder / "apptainer")
        return {**self.env, "PATH": f"{folder}:{self.env['PATH']}", "APPTAINER_ON_PODMAN_IMAGE": tag,
                "APPTAINER_ON_PODMAN_LOG": str(folder / "apptainer.log")}
