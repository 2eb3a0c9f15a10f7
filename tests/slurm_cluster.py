"""A real SLURM cluster on this machine for the tests: Debian's slurmctld, two slurmd (nodes n1 and n2, each
on its own port, both addressed at 127.0.0.1) and munge, two fake GPUs per node for scheduling (gres with
plain files), no accounting. Partition `test` (the default) is n1 alone; partition `pair` is both nodes,
for multi-node jobs.

`SlurmCluster.start()` installs the packages when missing (as root), writes the config (state, logs and
the fake GPU files in a temporary folder; slurm.conf and gres.conf where every client looks, /etc/slurm,
as jobs do not keep SLURM_CONF), starts the daemons and waits for the nodes; `stop()` ends them by pid.
Where the daemons cannot start, `start()` raises ClusterUnavailable with the reason, and the tests skip
with it. Both nodes are this machine: a job's `hostname` is its own, which resolves here, so no system
file is touched.
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
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
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
{nodes}
PartitionName=test Nodes={first} Default=YES MaxTime=INFINITE State=UP
PartitionName=pair Nodes={all} MaxTime=INFINITE State=UP
"""


NODES = {"n1": 17001, "n2": 17002}  # node name: its slurmd's port
GPUS_PER_NODE = 2


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
        for name in NODES:
            (self.root / f"spool-{name}").mkdir(exist_ok=True)
        gpus = {name: [self.root / f"fake-gpu-{name}-{i}" for i in range(GPUS_PER_NODE)] for name in NODES}
        for g in (g for files in gpus.values() for g in files):
            g.touch()
        # both nodes offer the whole machine: SLURM schedules them as two, the tests never fill both
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
        nodes = "\n".join(f"NodeName={name} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={port} "
                          f"CPUs={os.cpu_count()} RealMemory={memory} Gres=gpu:{GPUS_PER_NODE} State=UNKNOWN"
                          for name, port in NODES.items())
        if self.conf.exists() and "flatmix's tests" not in self.conf.read_text():
            raise ClusterUnavailable(f"{self.conf} belongs to a real cluster; not overwriting it")
        self.conf.parent.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, nodes=nodes, first=next(iter(NODES)),
                                               all=",".join(NODES)))
        (self.conf.parent / "gres.conf").write_text(
            "AutoDetect=off\n" + "".join(f"NodeName={name} Name=gpu File={g}\n"
                                         for name, files in gpus.items() for g in files))
        _run("slurmctld", "-f", str(self.conf), env=self.env)
        for name in NODES:
            _run("slurmd", "-f", str(self.conf), "-N", name, env=self.env)
        deadline = time.time() + 60
        while time.time() < deadline:
            states = _run("sinfo", "-h", "-N", "-p", "pair", "-o", "%N %t", check=False, env=self.env).stdout.split()
            if len(states) == 2 * len(NODES) and all(t in ("idle", "mix", "alloc") for t in states[1::2]):
                return self
            time.sleep(1)
        self.stop()
        raise ClusterUnavailable(f"the nodes never became idle ({' '.join(states)!r}); see {self.root}/slurmd-*.log")

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
        pids = [self.root / f"slurmd-{name}.pid" for name in NODES] + [self.root / "slurmctld.pid"]
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
