"""A real one-node SLURM cluster on this machine for the tests: Debian's slurmctld, slurmd and munge,
two fake GPUs for scheduling (gres with plain files), no accounting.

`SlurmCluster.start()` installs the packages when missing (as root), writes the config (state, logs and
the fake GPU files in a temporary folder; slurm.conf and gres.conf where every client looks, /etc/slurm,
as jobs do not keep SLURM_CONF), starts the daemons and waits for the node; `stop()` ends them by pid. Where the daemons cannot start, `start()` raises ClusterUnavailable with the
reason, and the tests skip with it.
"""

import os
from pathlib import Path
import shutil
import socket
import subprocess
import time

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


class ClusterUnavailable(Exception):
    pass


def _run(*cmd, check=True, timeout=600, env=None):
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise ClusterUnavailable(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return result


def _install():
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ClusterUnavailable("slurmctld/slurmd/munge are not installed and apt-get cannot install them here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run("apt-get", "update", "-qq", env=env)
    _run("apt-get", "install", "-y", "-qq", *PACKAGES, env=env)


SLURM_CONF = """\
# written by flatmix's tests (tests/slurm_cluster.py)
ClusterName=flatmix-test
SlurmctldHost={host}
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# no accounting: keep finished jobs visible to squeue for the executor's status queries
MinJobAge=86400
KillWait=30
SchedulerType=sched/backfill
NodeName={host} CPUs={cpus} RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self, root, etc="/etc/slurm"):
        self.root = Path(root)
        self.conf = Path(etc) / "slurm.conf"
        self.host = socket.gethostname()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._munge_started = False

    def start(self):
        _install()
        self._start_munge()
        (self.root / "state").mkdir(parents=True, exist_ok=True)
        (self.root / "spool").mkdir(exist_ok=True)
        gpus = [self.root / f"fake-gpu{i}" for i in range(2)]
        for g in gpus:
            g.touch()
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        if self.conf.exists() and "flatmix's tests" not in self.conf.read_text():
            raise ClusterUnavailable(f"{self.conf} belongs to a real cluster; not overwriting it")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, cpus=os.cpu_count(), memory=memory))
        (self.conf.parent / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"Name=gpu File={g}\n" for g in gpus))
        _run("slurmctld", "-f", str(self.conf), env=self.env)
        _run("slurmd", "-f", str(self.conf), env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            state = _run("sinfo", "-h", "-N", "-o", "%t", check=False, env=self.env).stdout.strip()
            if state in ("idle", "mix", "alloc"):
                return self
            time.sleep(1)
        self.stop()
        raise ClusterUnavailable(f"the node never became idle (state {state!r}); see {self.root}/slurmd.log")

    def _start_munge(self):
        if _run("munge", "-n", check=False).returncode == 0:
            return  # a munged is already running
        for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
            Path(folder).mkdir(parents=True, exist_ok=True)
            shutil.chown(folder, "munge", "munge")
        _run("runuser", "-u", "munge", "--", "munged")
        self._munge_started = True

    def stop(self):
        """End the daemons this cluster started, by their pid files."""
        names = ["slurmd", "slurmctld"]
        pids = [(self.root / f"{n}.pid") for n in names]
        if self._munge_started:
            pids.append(Path("/run/munge/munged.pid"))
        for pidfile in pids:
            try:
                os.kill(int(pidfile.read_text().strip()), 15)
            except (OSError, ValueError):
                pass

    def squeue(self, *args):
        return _run("squeue", "-h", *args, env=self.env).stdout

    def job(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, TresPerNode, ...)."""
        text = _run("scontrol", "show", "job", "-o", str(job_id), env=self.env).stdout
        return dict(item.split("=", 1) for item in text.split() if "=" in item)

    def jobs(self):
        """Every job the controller still knows (MinJobAge keeps finished ones), as dicts."""
        text = _run("scontrol", "show", "job", "-o", env=self.env, check=False).stdout
        return [dict(item.split("=", 1) for item in line.split() if "=" in item)
                for line in text.splitlines() if line.strip() and "JobId=" in line]
