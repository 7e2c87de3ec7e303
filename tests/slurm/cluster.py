"""A real two-node SLURM cluster on one machine, for tests: munged, slurmctld and one slurmd per node.

Each node is its own network namespace with its own hostname (a UTS namespace), its own /etc/hosts (a bind mount
in its own mount namespace) and its own address on a private bridge, so a job's ranks really talk over TCP from
one host to another. The bridge and slurmctld live in a namespace of their own too: nothing is added to this
machine's network, and two clusters (two test sessions) never see each other. The filesystem is shared by all
nodes, as on a real cluster's NFS: the repository is the "shared filesystem".

    python -m tests.slurm.cluster          # start one, print how to submit to it; Ctrl-C tears it down

Needs root (namespaces, bind mounts) and Debian's `slurm-wlm`, `munge`, `iproute2` (`make slurm` installs them).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

SUBNET = "10.77.0"  # private: the bridge lives in the controller's namespace, never on this machine's network
CTL_ADDR = f"{SUBNET}.1"
CTL_PORT = 6817
NODES = {"node1": f"{SUBNET}.11", "node2": f"{SUBNET}.12"}
PACKAGES = "slurm-wlm munge iproute2 util-linux"
TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "ip", "nsenter", "unshare", "mount")

# Short timeouts, so a dead node is declared DOWN (and its job ended) within seconds, not the 5 minutes of
# Slurm's defaults. linuxproc/task none: no cgroups to manage inside a container.
CONF = """\
ClusterName=ft{tag}
SlurmctldHost=ctl({ctl_addr})
SlurmctldPort={ctl_port}
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/ctld
SlurmctldPidFile={dir}/ctld/slurmctld.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdSpoolDir={dir}/%n
SlurmdPidFile={dir}/%n/slurmd.pid
SlurmdLogFile={dir}/%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
PropagateResourceLimits=NONE
SelectType=select/linear
SchedulerType=sched/builtin
ReturnToService=2
SlurmdTimeout=10
SlurmctldTimeout=10
MessageTimeout=5
KillWait=5
InactiveLimit=0
MinJobAge=3600
FirstJobId={first_job}
{nodes}
PartitionName=debug Nodes={node_list} Default=YES MaxTime=INFINITE State=UP
"""


class ClusterError(RuntimeError):
    pass


def unavailable() -> Optional[str]:
    """Why this machine cannot run the cluster (a reason to skip), or None when it can."""
    if os.geteuid() != 0:
        return "the SLURM cluster needs root (network, UTS and mount namespaces)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return None  # missing tools are a setup error, reported by `missing_tools`, not a reason to skip
    probe = f"ftprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"this machine cannot create network namespaces (`ip netns add`: {made.stderr.strip()})"
    try:
        uts = subprocess.run(["ip", "netns", "exec", probe, "unshare", "--uts", "--mount", "true"],
                             capture_output=True, text=True)
        if uts.returncode != 0:
            return f"this machine cannot create UTS/mount namespaces (`unshare`: {uts.stderr.strip()})"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def missing_tools() -> list[str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [t for t in TOOLS if not shutil.which(t, path=path)]


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Cluster:
    """`with Cluster() as c:` or `c.start()` ... `c.stop()`; `c.sbatch(...)`, `c.job(id)`, `c.kill_node("node2")`."""

    def __init__(self, workdir: Optional[Path] = None):
        self.tag = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="slurm-")).resolve()
        self.ctl_ns = f"ft{self.tag}-ctl"
        self.node_ns = {n: f"ft{self.tag}-{n}" for n in NODES}
        self.conf = self.dir / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"}

    # ---- lifecycle
    def __enter__(self) -> "Cluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> "Cluster":
        missing = missing_tools()
        if missing:
            raise ClusterError(f"not installed: {', '.join(missing)}; run `make slurm` (apt-get install {PACKAGES})")
        try:
            self._write_files()
            self._network()
            self._munged()
            self._slurmctld()
            for node in NODES:
                self.start_node(node)
            self.wait_nodes("idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything this cluster started ends: daemons, job processes in the namespaces, the namespaces."""
        for name in ("slurmd-node1", "slurmd-node2", "slurmctld"):
            proc = self.procs.get(name)
            if proc and proc.poll() is None:
                proc.terminate()
        for ns in [*self.node_ns.values(), self.ctl_ns]:
            self._kill_namespace(ns)
            sh("ip", "netns", "del", ns, check=False)
        munged = self.procs.get("munged")
        if munged and munged.poll() is None:
            munged.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    # ---- set-up steps
    def _write_files(self) -> None:
        (self.dir / "ctld").mkdir(parents=True, exist_ok=True)
        (self.dir / "munge").mkdir(mode=0o700, exist_ok=True)
        for node in NODES:
            (self.dir / node).mkdir(exist_ok=True)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        nodes = "\n".join(f"NodeName={n} NodeAddr={a} CPUs={os.cpu_count() or 1} State=UNKNOWN"
                          for n, a in NODES.items())
        # Job ids differ between clusters, so outputs/<job name>-<job id> never meets an earlier session's run.
        first_job = int(time.time()) % 1_000_000 * 10
        self.conf.write_text(CONF.format(tag=self.tag, ctl_addr=CTL_ADDR, ctl_port=CTL_PORT, dir=self.dir,
                                         first_job=first_job, nodes=nodes, node_list=",".join(NODES)))
        hosts = f"127.0.0.1 localhost\n{CTL_ADDR} ctl\n" + "".join(f"{a} {n}\n" for n, a in NODES.items())
        (self.dir / "hosts").write_text(hosts)

    def _network(self) -> None:
        """A bridge in the controller's namespace; each node a veth pair: eth0 in the node, its peer on the bridge."""
        sh("ip", "netns", "add", self.ctl_ns)
        self.ns(self.ctl_ns, "ip", "link", "set", "lo", "up")
        self.ns(self.ctl_ns, "ip", "link", "add", "br0", "type", "bridge")
        self.ns(self.ctl_ns, "ip", "addr", "add", f"{CTL_ADDR}/24", "dev", "br0")
        self.ns(self.ctl_ns, "ip", "link", "set", "br0", "up")
        for node, addr in NODES.items():
            ns = self.node_ns[node]
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", node, "netns", self.ctl_ns)
            self.ns(self.ctl_ns, "ip", "link", "set", node, "master", "br0")
            self.ns(self.ctl_ns, "ip", "link", "set", node, "up")
            self.ns(ns, "ip", "link", "set", "lo", "up")
            self.ns(ns, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
            self.ns(ns, "ip", "link", "set", "eth0", "up")

    def _munged(self) -> None:
        m = self.dir / "munge"
        self.procs["munged"] = subprocess.Popen(
            ["munged", "--foreground", "--force", f"--socket={m}/munge.sock", f"--key-file={m}/munge.key",
             f"--log-file={m}/munged.log", f"--pid-file={m}/munged.pid", f"--seed-file={m}/munged.seed"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_for(lambda: (m / "munge.sock").exists(), "munged", 20)

    def _slurmctld(self) -> None:
        self.procs["slurmctld"] = self._host_process(self.ctl_ns, "ctl", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self.scontrol("ping", check=False).returncode == 0, "slurmctld", 30)

    def start_node(self, node: str) -> None:
        """(Re)start a node's slurmd; with ReturnToService=2 a DOWN node is back in service once it registers."""
        self.ns(self.ctl_ns, "ip", "link", "set", node, "up")
        self.procs[f"slurmd-{node}"] = self._host_process(
            self.node_ns[node], node, ["slurmd", "-D", "-N", node, "-f", str(self.conf)])

    def _host_process(self, ns: str, hostname: str, cmd: list[str]) -> subprocess.Popen:
        """`cmd` as the host `hostname`: in namespace `ns`, its own UTS (hostname) and mount (/etc/hosts)."""
        log = open(self.dir / f"{hostname}.stderr", "a")
        # nsenter, not `ip netns exec`: the latter mounts a fresh /sys, hiding the cgroup filesystem slurmd
        # insists on finding at start (even with proctrack/linuxproc), so slurmd sees this machine's, as it would
        # if it ran here without namespaces.
        boot = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "--mount", "sh", "-c", boot,
                                 hostname, str(self.dir / "hosts"), *cmd],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    # ---- use
    def ns(self, ns: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *cmd, check=check, env=kw.pop("env", self.env), **kw)

    def client(self, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """A SLURM client command (sbatch, scontrol, ...) run on the controller's host."""
        return self.ns(self.ctl_ns, *cmd, check=check, **kw)

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.client("scontrol", *args, check=check)

    def sbatch(self, *args: str, cwd: Path, env: Optional[dict] = None) -> int:
        """Submit; returns the job id. `args`: sbatch options, the script, then the script's arguments."""
        proc = self.client("sbatch", "--parsable", *args, cwd=cwd, env={**self.env, **(env or {})})
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Reason, NodeList, ExitCode, Restarts, ...)."""
        out = self.scontrol("show", "job", "--oneliner", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: int, states: set[str], timeout: float) -> dict[str, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.5)
        raise ClusterError(f"job {job_id} not in {states} after {timeout:.0f} s: {self.job(job_id)}")

    def node_state(self, node: str) -> str:
        out = self.scontrol("show", "node", "--oneliner", node).stdout
        return re.search(r"State=(\S+)", out).group(1)

    def wait_nodes(self, state: str, timeout: float) -> None:
        self._wait_for(lambda: all(self.node_state(n).lower().startswith(state) for n in NODES),
                       f"nodes {state}", timeout)

    def kill_node(self, node: str) -> None:
        """Power loss: the node drops off the network first (nothing more reaches its peers, not even a TCP
        reset), then everything running on it dies: slurmd, slurmstepd, the training ranks."""
        self.ns(self.ctl_ns, "ip", "link", "set", node, "down")
        self._kill_namespace(self.node_ns[node])
        proc = self.procs.pop(f"slurmd-{node}", None)
        if proc:
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        """A daemon's log: 'slurmctld', 'node1', 'node2'."""
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- helpers
    def _kill_namespace(self, ns: str) -> None:
        pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _wait_for(self, cond, what: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}; logs in {self.dir}:\n"
                                   + self._tails())
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.dir}:\n" + self._tails())

    def _tails(self) -> str:
        logs = sorted(self.dir.glob("*.log")) + sorted(self.dir.glob("*.stderr")) + [self.dir / "munge" / "munged.log"]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())


def main() -> None:
    reason = unavailable()
    if reason:
        sys.exit(reason)
    with Cluster() as c:
        print(f"SLURM cluster up: nodes {', '.join(f'{n} ({a})' for n, a in NODES.items())}, files in {c.dir}\n"
              f"submit from the controller's host, e.g.:\n"
              f"  ip netns exec {c.ctl_ns} env SLURM_CONF={c.conf} sbatch --nodes 2 launch/slurm/train.sbatch "
              f"recipe=tiny_lora\n"
              f"a shell on a node: ip netns exec {c.node_ns['node1']} bash\n"
              f"Ctrl-C stops the cluster.", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
