"""A throw-away one-node SLURM cluster for tests (pytest fixture ``slurm_cluster``).

How the tests start the cluster (Debian 12, ``apt-get install -y slurm-wlm``,
Slurm 22.05; run as root, as in CI):

1. Write ``slurm.conf`` in a temporary directory: one node, named after
   ``hostname -s``, at 127.0.0.1 with 2 CPUs; ``SlurmctldPort``/``SlurmdPort``
   are free ports; state, spool, logs and pid files stay in that directory.
   No cgroups (``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``,
   so no ``cgroup.conf``), no accounting daemon, ``MinJobAge=3600`` so that
   ``scontrol show job`` still knows finished jobs.
2. Authentication: ``AuthType=auth/none`` + ``CredType=cred/none``, so no munge
   is needed. Where Slurm has no ``auth_none`` plugin (or with
   ``SLURM_TEST_AUTH=munge``) a private ``munged --foreground --force`` runs
   instead, with a generated key and its own socket (``AuthInfo=socket=...``).
3. Start ``slurmctld -D`` and ``slurmd -D -N <node>`` as child processes with
   ``SLURM_CONF`` pointing at the file, and wait until ``sinfo`` reports the
   node ``idle`` (about 1 s).
4. Tests submit with ``sbatch`` and poll ``scontrol show job`` (``sacct``
   needs slurmdbd, which is not run).
5. Teardown: ``scancel`` every job, wait for them to leave the node, then
   SIGTERM (then SIGKILL) the daemons, even when tests failed.

The fixture is skipped when ``slurmctld`` is not installed.
"""

from __future__ import annotations

import getpass
import glob
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"])
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
    "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
}

SLURM_CONF = """\
ClusterName=pytest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
{auth}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=3600
KillWait=2
NodeName={node} NodeAddr=127.0.0.1 CPUs=2 RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_auth_none() -> bool:
    """Slurm 22.05 (Debian 12) still ships auth/none; later releases dropped it."""
    patterns = ("/usr/lib*/*/slurm*/auth_none.so", "/usr/lib*/slurm*/auth_none.so",
                "/usr/local/lib*/slurm*/auth_none.so")
    return any(glob.glob(p) for p in patterns)


class SlurmCluster:
    """A running cluster: ``env`` for subprocesses, plus submit/wait helpers."""

    def __init__(self, root: Path):
        self.root = root
        self.node = socket.gethostname().split(".")[0] or "localhost"
        self.procs: dict[str, subprocess.Popen] = {}
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SQUEUE_", "SRUN_", "SALLOC_"))}
        env["PATH"] = env.get("PATH", "") + os.pathsep + SBIN
        env["SLURM_CONF"] = str(root / "slurm.conf")
        self.env = env

    # -- lifecycle ---------------------------------------------------------
    def _spawn(self, name: str, *cmd: str) -> None:
        exe = shutil.which(cmd[0], path=self.env["PATH"]) or cmd[0]
        log = open(self.root / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(
            (exe, *cmd[1:]), env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _munge_auth(self) -> str:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sock = self.root / "munge.sock"
        self._spawn("munged", "munged", "--foreground", "--force",
                    f"--key-file={key}", f"--socket={sock}",
                    f"--pid-file={self.root}/munged.pid",
                    f"--log-file={self.root}/munged.log",
                    f"--seed-file={self.root}/munged.seed")
        self._wait_for(lambda: sock.exists(), 10, "munged socket")
        return f"AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={sock}"

    def start(self, timeout: float = 30) -> None:
        for d in ("state", "spool", "jobs"):
            (self.root / d).mkdir(exist_ok=True)
        use_munge = os.environ.get("SLURM_TEST_AUTH") == "munge" or not _has_auth_none()
        auth = (self._munge_auth() if use_munge
                else "AuthType=auth/none\nCredType=cred/none")
        mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        (self.root / "slurm.conf").write_text(SLURM_CONF.format(
            node=self.node, root=self.root, user=getpass.getuser(), auth=auth,
            ctld_port=_free_port(), slurmd_port=_free_port(), mem_mb=mem_mb))
        self._spawn("slurmctld", "slurmctld", "-D", "-i")
        self._spawn("slurmd", "slurmd", "-D", "-N", self.node)
        self._wait_for(lambda: self.run("sinfo", "-h", "-o", "%T", check=False)
                       .stdout.strip() == "idle", timeout, "node idle in sinfo")

    def _wait_for(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: no {what} (dead: {dead})\n"
                                   + self.logs())
            time.sleep(0.1)

    def logs(self, tail: int = 20) -> str:
        out = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.run("squeue", "-h", "-o", "%A", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + 15
                while (time.monotonic() < deadline and
                       self.run("squeue", "-h", check=False).stdout.strip()):
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # -- helpers for tests -------------------------------------------------
    def run(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run a SLURM client command (or anything) with ``self.env``."""
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                              check=check, timeout=60, **kw)

    def sbatch(self, script, *args: str, cwd=None) -> str:
        """Submit ``script`` (a path, or script text starting with ``#!``); return the job id.

        Jobs run in ``cwd`` (default: a ``jobs/`` folder of the cluster dir).
        """
        cwd = str(cwd or self.root / "jobs")
        text = str(script)
        if text.startswith("#!"):
            res = self.run("sbatch", "--parsable", *args, input=text, cwd=cwd, check=False)
        else:
            res = self.run("sbatch", "--parsable", *args, str(script), cwd=cwd, check=False)
        if res.returncode:
            raise RuntimeError(f"sbatch failed: {res.stderr}")
        return res.stdout.strip().split(";")[0]

    def states(self, job_id: str) -> list[str]:
        """States of a job (one per array task, pending tasks as one record)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        return re.findall(r"\bJobState=(\S+)", out)

    def wait(self, job_id: str, timeout: float = 60) -> str:
        """Wait until the job (all array tasks) ends; return its final state.

        ``COMPLETED`` only if every task completed; otherwise the first other state.
        """
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job_id)
            if states and all(s in FINAL_STATES for s in states):
                bad = [s for s in states if s != "COMPLETED"]
                return bad[0] if bad else "COMPLETED"
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {states} after {timeout}s\n"
                                   + self.logs())
            time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """Start a one-node SLURM cluster for the session; stop it afterwards."""
    path = os.environ.get("PATH", "") + os.pathsep + SBIN
    missing = [b for b in ("slurmctld", "slurmd", "sbatch") if not shutil.which(b, path=path)]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing); "
                    "apt-get install -y slurm-wlm")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
