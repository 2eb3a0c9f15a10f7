"""The DAG on a real SLURM cluster on this machine (Debian's slurmctld, two slurmd and munge; fake GPUs;
tests/slurm_cluster.py):
- through the slurm-apptainer profile, every rule in a SLURM job inside the image built from
  containers/Dockerfile (podman standing in for Apptainer): the smoke DAG to its report, GPU jobs asking for
  a GPU, and one pretraining job requeued while it runs, which resumes from its last checkpoint;
- through the slurm profile, one pretraining run on two nodes (one torchrun per node, started by srun),
  requeued while it runs."""

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


def slurm_snakemake(cwd, *args, profile="slurm-apptainer"):
    """snakemake with a slurm profile, as a user on a cluster without accounting would run it; status queries
    from 5 s after a submission (the executor's default, 40 s, growing by 10 s at each query that finds no
    job finished, is for a busy cluster's controller, and would leave these short jobs' results unseen for
    up to a minute)."""
    return [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(cwd),
            "--profile", str(REPO / "workflow" / "profiles" / profile),
            "--slurm-no-account", "--slurm-status-command", "squeue", "--seconds-between-status-checks", "5",
            "--slurm-init-seconds-before-status-checks", "5", *args]


def run_until_requeued(cluster, command, env, cwd, run, before):
    """Start snakemake; once `run`'s pretraining has written last.pth (its first epoch is done), requeue
    its job, which is running its second; then let snakemake finish. (output, requeued job id)"""
    snakemake = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                 cwd=cwd)
    folder = cwd / "results" / "smoke" / "pretrain" / run
    try:
        deadline = time.time() + 1800
        while not (folder / "last.pth").exists():
            if snakemake.poll() is not None:
                pytest.fail(f"snakemake ended before {run}'s pretraining wrote last.pth:\n"
                            f"{snakemake.stdout.read()[-4000:]}")
            assert time.time() < deadline, f"{run}'s pretraining never wrote last.pth"
            time.sleep(1)
        job = next(j for j in cluster.jobs() if j["JobId"] not in before and _rule(j) == "pretrain"
                   and j.get("Comment", "").endswith(f"_wildcards_{run}"))
        assert job["JobState"] == "RUNNING", job
        subprocess.run(["scontrol", "requeue", job["JobId"]], check=True, env=cluster.env)
        # SLURM holds a requeued job back for a while (Reason=BeginTime); once the old one has ended, let
        # it start again at once rather than wait out that hold
        while cluster.job(job["JobId"])["JobState"] != "PENDING":
            assert time.time() < deadline, f"{run}'s requeued job never returned to the queue"
            time.sleep(1)
        subprocess.run(["scontrol", "update", f"JobId={job['JobId']}", "StartTime=now"], check=True, env=cluster.env)
        output, _ = snakemake.communicate(timeout=3000)
    finally:
        if snakemake.poll() is None:
            snakemake.kill()
    assert snakemake.returncode == 0, output[-4000:]
    return output, job["JobId"]


def assert_resumed_mid_epoch_and_trained_each_step_once(work, run):
    """The requeued job's SIGTERM reached flatmix, which saved last.pth mid-epoch; the requeued job continued
    from there, and every step of both epochs trained once."""
    folder = work / "results" / "smoke" / "pretrain" / run
    log = (work / "results" / "smoke" / "logs" / "pretrain" / f"{run}.log").read_text()
    resumed = re.search(r"^pretrain: continuing from \S+last\.pth at epoch 2 step (\d+)$", log, re.M)
    assert resumed and int(resumed.group(1)) > 0, log[-2000:]
    checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
    assert checkpoint["format"] == "flatmix-pretrain/1" and checkpoint["config"]["train"]["epochs"] == 2
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]  # the kNN monitor's lines, one per epoch, carry no loss
    assert [r["epoch"] for r in records if "knn_top1" in r] == [0, 1]
    per_epoch = max(s["step"] for s in steps if s["epoch"] == 0)
    for epoch in (0, 1):
        assert [s["step"] for s in steps if s["epoch"] == epoch] == list(range(1, per_epoch + 1))
    return json.loads((folder / "summary.json").read_text())


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
    before = {j["JobId"] for j in cluster.jobs()}
    _, requeued = run_until_requeued(cluster, slurm_snakemake(work, "--configfile", str(config)), env, work,
                                     "smoke-moco", before)
    assert (work / "results" / "smoke" / "report" / "report.html").is_file()

    # every rule ran in a SLURM job (but workflow_config, a local rule with no command), and GPU jobs, and
    # only they, asked for a GPU
    jobs = [j for j in cluster.jobs() if j["JobId"] not in before]
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(_rule(j), []).append(j)
    assert len(by_rule["pretrain"]) == 4 and len(by_rule["detect"]) == 4 and len(by_rule["report"]) == 1
    for j in jobs:
        assert j["JobState"] == "COMPLETED", j
        assert _gpus(j) == (_rule(j) in ("pretrain", "detect")), j
    # ... inside the image: one `apptainer exec` per job and start, and each result made by the image's flatmix
    restarts = int(cluster.job(requeued)["Restarts"])
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

    # the requeued job's SIGTERM reached flatmix inside the container
    assert restarts >= 1
    assert_resumed_mid_epoch_and_trained_each_step_once(work, "smoke-moco")


@pytest.mark.slow
def test_a_two_node_pretraining_through_the_slurm_profile_resumes_after_a_requeue(cluster, tmp_path):
    """A user trying the multi-node launch: smoke.pretrain.nodes 2 on the two-node partition, one target.
    One SLURM job on both nodes runs one torchrun per node, which meet at the first; two processes train and
    end with equal weights; the job, requeued mid-run (SLURM signals every process of the step, the loader
    workers of each process among them), resumes from last.pth."""
    config = tmp_path / "two-nodes.yaml"
    # both nodes are this machine: SLURM binds a job's tasks to the cores it allocated on each node, which
    # would be the same core on both; two per node gives each rank the machine's two
    slurm = {"partition": "pair", "resources": {"smoke": {"pretrain": {"cpus_per_gpu": 2}}}}
    config.write_text(yaml.safe_dump({"slurm": slurm, "smoke": {"pretrain": {"nodes": 2, "workers": 2}}}))
    work = tmp_path / "work"
    work.mkdir()
    target = "results/smoke/pretrain/smoke-moco/checkpoint.pth"
    before = {j["JobId"] for j in cluster.jobs()}
    output, requeued = run_until_requeued(
        cluster, slurm_snakemake(work, target, "--configfile", str(config), profile="slurm"), cluster.env, work,
        "smoke-moco", before)
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in output and " flatmix-torchrun --nnodes=2 " in output

    job = cluster.job(requeued)
    assert (job["JobState"], job["NumNodes"], job["Partition"]) == ("COMPLETED", "2", "pair"), job
    assert job["NodeList"] == "n[1-2]" and int(job["Restarts"]) >= 1, job
    others = [j for j in cluster.jobs() if j["JobId"] not in before and j["JobId"] != requeued]
    assert {_rule(j) for j in others} == {"synth", "prepare_imagenet"} and all(j["NumNodes"] == "1" for j in others)
    summary = assert_resumed_mid_epoch_and_trained_each_step_once(work, "smoke-moco")
    assert summary["processes"] == 2
    checkpoint = work / "results" / "smoke" / "pretrain" / "smoke-moco" / "checkpoint.pth"
    assert torch.load(checkpoint, weights_only=True)["config"]["data"]["workers"] == 2
    digests = summary["parameters_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert summary["provenance"]["hardware"]["slurm_job"]
