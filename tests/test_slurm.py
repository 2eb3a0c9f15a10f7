"""The DAG on a real one-node SLURM cluster (Debian's slurmctld, slurmd and munge; two fake GPUs),
through the slurm profile: the smoke DAG to its report with GPU jobs asking for a GPU, and a pretraining
job requeued while it runs, which resumes from its last checkpoint."""

import json
from pathlib import Path
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from slurm_cluster import ClusterUnavailable, SlurmCluster

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


def slurm_snakemake(cluster, cwd, *args):
    """snakemake with the slurm profile, as a user on a cluster without accounting would run it."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(cwd),
            "--profile", str(REPO / "workflow" / "profiles" / "slurm"),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--seconds-between-status-checks", "5",
            *args]


def _rule(job):
    return job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]


def _gpus(job):
    tres = ",".join(job.get(k, "") for k in ("TresPerNode", "TresPerJob", "TresPerTask"))
    return "gres:gpu:1" in tres or "gres/gpu=1" in tres


@pytest.mark.slow
def test_smoke_dag_through_slurm(cluster, tmp_path):
    before = {j["JobId"] for j in cluster.jobs()}
    result = subprocess.run(slurm_snakemake(cluster, tmp_path), capture_output=True, text=True, env=cluster.env,
                            cwd=tmp_path, timeout=3000)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "results" / "smoke" / "report" / "report.html").is_file()
    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(_rule(job), []).append(job)
    assert len(by_rule["pretrain"]) == 4 and len(by_rule["detect"]) == 4 and len(by_rule["report"]) == 1
    for job in jobs:
        assert job["JobState"] == "COMPLETED", job
        assert _gpus(job) == (_rule(job) in ("pretrain", "detect")), job  # GPU jobs, and only they, ask for one
    # the code ran on the CPU (no CUDA behind the fake GPUs)
    metrics = json.loads((tmp_path / "results" / "smoke" / "detect" / "smoke-moco-mix" / "coco-retinanet-frozen" /
                          "metrics.json").read_text())
    assert metrics["device"] == "cpu" and metrics["provenance"]["hardware"]["slurm_job"]


@pytest.mark.slow
def test_requeued_pretraining_resumes_from_its_last_checkpoint(cluster, tmp_path):
    target = "results/smoke/pretrain/smoke-moco/checkpoint.pth"
    run = tmp_path / "results" / "smoke" / "pretrain" / "smoke-moco"
    before = {j["JobId"] for j in cluster.jobs()}
    snakemake = subprocess.Popen(slurm_snakemake(cluster, tmp_path, target), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=cluster.env, cwd=tmp_path)
    try:
        deadline = time.time() + 900
        while not (run / "last.pth").exists():  # the first epoch is done: requeue during the second
            assert snakemake.poll() is None and time.time() < deadline, "pretraining never wrote last.pth"
            time.sleep(1)
        job = next(j for j in cluster.jobs() if j["JobId"] not in before and _rule(j) == "pretrain")
        assert job["JobState"] == "RUNNING", job
        subprocess.run(["scontrol", "requeue", job["JobId"]], check=True, env=cluster.env)
        output, _ = snakemake.communicate(timeout=900)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, output[-4000:]
    assert int(cluster.job(job["JobId"])["Restarts"]) >= 1
    checkpoint = torch.load(run / "checkpoint.pth", weights_only=True)
    assert checkpoint["format"] == "flatmix-pretrain/1" and checkpoint["config"]["train"]["epochs"] == 2
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_epoch = max(s["step"] for s in steps if s["epoch"] == 0)
    # resumed, not restarted: the first epoch was trained once
    assert sum(1 for s in steps if s["epoch"] == 0) == per_epoch
    assert [s["step"] for s in steps if s["epoch"] == 1][-1] == per_epoch
