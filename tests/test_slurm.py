"""The DAG on a real one-node SLURM cluster (Debian's slurmctld, slurmd and munge; two fake GPUs) through
the slurm-apptainer profile, every rule in a SLURM job inside the image built from containers/Dockerfile
(podman standing in for Apptainer): the smoke DAG to its report, GPU jobs asking for a GPU, and one
pretraining job requeued while it runs, which resumes from its last checkpoint."""

import json
from pathlib import Path
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml

from conftest import REPO
from slurm_cluster import ClusterUnavailable, SlurmCluster
from test_containers import assert_made_in_the_image

pytestmark = pytest.mark.slurm
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except ClusterUnavailable as e:
        pytest.skip(f"the SLURM daemons cannot start here: {e}")
    yield c
    c.stop()


def slurm_snakemake(cwd, *args):
    """snakemake with the slurm-apptainer profile, as a user on a cluster without accounting would run it."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(cwd),
            "--profile", str(REPO / "workflow" / "profiles" / "slurm-apptainer"),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--seconds-between-status-checks", "5",
            *args]


def _rule(job):
    return job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]


def _gpus(job):
    tres = ",".join(job.get(k, "") for k in ("TresPerNode", "TresPerJob", "TresPerTask"))
    return "gres:gpu:1" in tres or "gres/gpu=1" in tres


@pytest.mark.slow
@pytest.mark.container
def test_smoke_dag_in_the_image_through_slurm_with_a_requeued_pretraining(cluster, image, tmp_path):
    engine, tag = image
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    env = {**engine.apptainer(fake_bin, tag), "SLURM_CONF": cluster.env["SLURM_CONF"]}
    sif = tmp_path / "flatmix.sif"
    sif.touch()
    config = tmp_path / "image.yaml"
    config.write_text(yaml.safe_dump({"container": {"image": str(sif)}}))
    work = tmp_path / "work"
    work.mkdir()
    requeued = work / "results" / "smoke" / "pretrain" / "smoke-moco"
    before = {j["JobId"] for j in cluster.jobs()}
    snakemake = subprocess.Popen(slurm_snakemake(work, "--configfile", str(config)), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env, cwd=work)
    try:
        deadline = time.time() + 1800
        while not (requeued / "last.pth").exists():  # its first epoch is done: requeue during the second
            assert snakemake.poll() is None and time.time() < deadline, "smoke-moco's pretraining never wrote last.pth"
            time.sleep(1)
        job = next(j for j in cluster.jobs() if j["JobId"] not in before and _rule(j) == "pretrain"
                   and j.get("Comment", "").endswith("_wildcards_smoke-moco"))
        assert job["JobState"] == "RUNNING", job
        subprocess.run(["scontrol", "requeue", job["JobId"]], check=True, env=cluster.env)
        output, _ = snakemake.communicate(timeout=3000)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, output[-4000:]
    assert (work / "results" / "smoke" / "report" / "report.html").is_file()

    # every rule ran in a SLURM job, and GPU jobs, and only they, asked for a GPU
    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(_rule(j), []).append(j)
    assert len(by_rule["pretrain"]) == 4 and len(by_rule["detect"]) == 4 and len(by_rule["report"]) == 1
    for j in jobs:
        assert j["JobState"] == "COMPLETED", j
        assert _gpus(j) == (_rule(j) in ("pretrain", "detect")), j
    # ... inside the image: one `apptainer exec` per job and start, and each result made by the image's flatmix
    restarts = int(cluster.job(job["JobId"])["Restarts"])
    calls = [line for line in (fake_bin / "apptainer.log").read_text().splitlines() if line.startswith("exec")]
    assert len(calls) == len(jobs) + restarts and all(str(sif) in c.split() for c in calls)
    records = [json.loads(f.read_text()) for f in (work / "results").rglob("*.json")]
    made = [r["provenance"] for r in records if isinstance(r, dict) and "provenance" in r]
    assert len(made) >= 4 + 4 + 4  # pretraining summaries, probes, detections (and more)
    for record in made:
        assert_made_in_the_image(record, engine, tag, sif)
        assert record["hardware"]["slurm_job"]
    metrics = json.loads((work / "results" / "smoke" / "detect" / "smoke-moco-mix" / "coco-retinanet-frozen" /
                          "metrics.json").read_text())
    assert metrics["device"] == "cpu"  # no CUDA behind the fake GPUs

    # the requeued job's SIGTERM reached flatmix inside the container, which saved last.pth mid-epoch; the
    # requeued job continued from there: every step trained once
    assert restarts >= 1
    log = (work / "results" / "smoke" / "logs" / "pretrain" / "smoke-moco.log").read_text()
    resumed = re.search(r"^pretrain: continuing from \S+last\.pth at epoch 2 step (\d+)$", log, re.M)
    assert resumed and int(resumed.group(1)) > 0, log[-2000:]
    checkpoint = torch.load(requeued / "checkpoint.pth", weights_only=True)
    assert checkpoint["format"] == "flatmix-pretrain/1" and checkpoint["config"]["train"]["epochs"] == 2
    steps = [json.loads(line) for line in (requeued / "metrics.jsonl").read_text().splitlines()]
    per_epoch = max(s["step"] for s in steps if s["epoch"] == 0)
    for epoch in (0, 1):
        assert [s["step"] for s in steps if s["epoch"] == epoch] == list(range(1, per_epoch + 1))
