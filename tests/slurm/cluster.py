"""A real two-node SLURM cluster on one machine, for tests: munged, slurmctld and one slurmd per node.

Each node is its own network namespace with its own hostname (a UTS namespace), its own /etc/hosts (a bind mount
in its own mount namespace) and its own address on a private bridge, so a job's ranks really talk over TCP from
one host to another. The bridge, slurmctld and munged live in a namespace of their own ("ctl"): nothing is added
to this machine's network, and two clusters (two test sessions) never see each other. The filesystem is shared by
all nodes, as a real cluster's NFS would be: the repository is the shared filesystem.

    python -m tests.slurm.cluster          # start one, print how to use it; Ctrl-C (or kill) tears it down

Needs root (namespaces, bind mounts) and Debian's slurm-wlm, munge, iproute2 (`make system-deps` installs them).
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

SUBNET = "10.77.0"  # private: the bridge lives in the controller's namespace, never on this machine's network
CTL_ADDR = f"{SUBNET}.1"
NODES = {"node1": f"{SUBNET}.11", "node2": f"{SUBNET}.12"}
PACKAGES = "slurm-wlm munge iproute2 util-linux"
TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "scontrol", "ip", "nsenter", "unshare", "mount")
NS_RE = re.compile(r"^ft(\d+)-[0-9a-f]{4}-\w+$")  # ft<pid of the owner>-<random>-<host>

# Short timeouts, so a dead node is declared DOWN (and its job ended) within seconds rather than after Slurm's
# default 5 minutes. linuxproc/task none: no cgroups to manage inside a container. ReturnToService=2: a node that
# was DOWN is back in service as soon as its slurmd registers again.
CONF = """\
ClusterName=finetune
SlurmctldHost=ctl({ctl_addr})
SlurmctldPort=6817
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

# `<dir>/on <host> <command...>`: run a command on a node (or "ctl") as that host: its network, hostname, /etc/hosts.
ON = """\
#!/bin/sh
# usage: {dir}/on <{hosts}> <command...>   run a command on that host of the test cluster
host="$1"; shift
exec env SLURM_CONF={dir}/slurm.conf nsenter --net=/run/netns/{prefix}-"$host" unshare --uts --mount \\
  sh -c 'hostname "$0" && mount --bind {dir}/hosts /etc/hosts && exec "$@"' "$host" "$@"
"""


class ClusterError(RuntimeError):
    pass


def unavailable() -> str | None:
    """Why this machine cannot run the cluster (a reason to skip), or None when it can."""
    if os.geteuid() != 0:
        return "the SLURM cluster needs root (network, UTS and mount namespaces); run as root or in a root container"
    if missing := missing_tools():
        return f"needs {', '.join(missing)}: `make system-deps` installs slurm-wlm, munge, iproute2 (as root, apt)"
    probe = f"ftprobe{os.getpid()}"
    made = sh("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"this machine cannot create network namespaces (`ip netns add`: {made.stderr.strip()})"
    try:
        inner = sh("nsenter", f"--net=/run/netns/{probe}", "unshare", "--uts", "--mount", "true", check=False)
        if inner.returncode != 0:
            return f"this machine cannot create UTS/mount namespaces (`unshare`: {inner.stderr.strip()})"
    finally:
        sh("ip", "netns", "del", probe, check=False)
    return None


def missing_tools() -> list[str]:
    return [t for t in TOOLS if not shutil.which(t, path=search_path())]


def search_path() -> str:
    return os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"  # the daemons live in sbin


def sh(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", {**os.environ, "PATH": search_path()})
    proc = subprocess.run(list(cmd), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def namespace_pids(ns: str) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]


def kill_namespace(ns: str) -> None:
    """SIGKILL every process whose network namespace is `ns` (all of them were started by its cluster)."""
    for pid in namespace_pids(ns):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def reap_stale() -> list[str]:
    """Remove the namespaces (and their processes) of clusters whose owner process is gone: a test session killed
    by SIGKILL cannot run its finalizers."""
    reaped = []
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = NS_RE.match(name)
        if m and not pid_alive(int(m.group(1))):
            kill_namespace(name)
            sh("ip", "netns", "del", name, check=False)
            reaped.append(name)
    return reaped


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Cluster:
    """`with Cluster(dir) as c:` (or `c.start()` ... `c.stop()`); `c.sbatch(...)`, `c.job(id)`, `c.kill_node(...)`."""

    def __init__(self, workdir: Path | None = None):
        self.prefix = f"ft{os.getpid()}-{secrets.token_hex(2)}"
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="slurm-")).resolve()
        self.conf = self.dir / "slurm.conf"
        self.on = self.dir / "on"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": search_path()}

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    # ---- lifecycle
    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> Cluster:
        missing = missing_tools()
        if missing:
            raise ClusterError(
                f"not installed: {', '.join(missing)}; run `make system-deps` (apt-get install {PACKAGES})"
            )
        reap_stale()
        try:
            self._write_files()
            self._network()
            self._start("munged", "ctl", ["munged", "--foreground", "--force", *self._munge_paths()])
            self._wait_for(lambda: (self.dir / "munge" / "munge.sock").exists(), "munged", 20)
            self._start("slurmctld", "ctl", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait_for(lambda: self.scontrol("ping", check=False).returncode == 0, "slurmctld", 30)
            for node in NODES:
                self.start_node(node)
            self.wait_nodes("idle", timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Everything this cluster started ends (daemons, jobs: all run inside its namespaces), then the namespaces."""
        for host in [*NODES, "ctl"]:
            kill_namespace(self.ns(host))
            sh("ip", "netns", "del", self.ns(host), check=False)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    # ---- set-up steps
    def _write_files(self) -> None:
        for d in ("ctld", *NODES):
            (self.dir / d).mkdir(parents=True, exist_ok=True)
        (self.dir / "munge").mkdir(mode=0o700, exist_ok=True)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        cpus = os.cpu_count() or 1
        nodes = "\n".join(f"NodeName={n} NodeAddr={a} CPUs={cpus} State=UNKNOWN" for n, a in NODES.items())
        # Job ids differ between clusters (Slurm starts at 1), so outputs/<job name>-<job id> never meets another
        # session's run: not an earlier one's, nor a concurrent one's in the same repository.
        first_job = 1 + secrets.randbelow(60_000_000)  # below Slurm's MaxJobId (67,043,328)
        self.conf.write_text(
            CONF.format(ctl_addr=CTL_ADDR, dir=self.dir, first_job=first_job, nodes=nodes, node_list=",".join(NODES))
        )
        hosts = f"127.0.0.1 localhost\n{CTL_ADDR} ctl\n" + "".join(f"{a} {n}\n" for n, a in NODES.items())
        (self.dir / "hosts").write_text(hosts)
        self.on.write_text(ON.format(dir=self.dir, prefix=self.prefix, hosts="|".join(["ctl", *NODES])))
        self.on.chmod(0o755)

    def _munge_paths(self) -> list[str]:
        m = self.dir / "munge"
        return [
            f"--socket={m}/munge.sock",
            f"--key-file={m}/munge.key",
            f"--log-file={m}/munged.log",
            f"--pid-file={m}/munged.pid",
            f"--seed-file={m}/munged.seed",
        ]

    def _network(self) -> None:
        """A bridge in the controller's namespace; each node a veth pair: eth0 in the node, its peer on the bridge
        (named after the node, so `ip link set node2 down` there cuts node2 off)."""
        ctl = self.ns("ctl")
        sh("ip", "netns", "add", ctl)
        for cmd in (
            ["link", "set", "lo", "up"],
            ["link", "add", "br0", "type", "bridge"],
            ["addr", "add", f"{CTL_ADDR}/24", "dev", "br0"],
            ["link", "set", "br0", "up"],
        ):
            sh("ip", "-n", ctl, *cmd)
        for node, addr in NODES.items():
            ns = self.ns(node)
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", node, "netns", ctl)
            sh("ip", "-n", ctl, "link", "set", node, "master", "br0")
            sh("ip", "-n", ctl, "link", "set", node, "up")
            for cmd in (
                ["link", "set", "lo", "up"],
                ["addr", "add", f"{addr}/24", "dev", "eth0"],
                ["link", "set", "eth0", "up"],
            ):
                sh("ip", "-n", ns, *cmd)

    def _start(self, name: str, host: str, cmd: list[str]) -> None:
        """A daemon on `host`. Through `on` (nsenter), not `ip netns exec`: the latter mounts a fresh /sys, hiding
        the cgroup filesystem that slurmd insists on finding at start even with proctrack/linuxproc."""
        log = open(self.dir / f"{name}.stderr", "ab")
        self.procs[name] = subprocess.Popen(
            [str(self.on), host, *cmd], env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def start_node(self, node: str) -> None:
        """(Re)start a node: its link up, its slurmd started (back in service once it registers)."""
        sh("ip", "-n", self.ns("ctl"), "link", "set", node, "up")
        self._start(f"slurmd-{node}", node, ["slurmd", "-D", "-N", node, "-f", str(self.conf)])

    # ---- use
    def run_on(self, host: str, *cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(str(self.on), host, *cmd, check=check, env={**self.env, **kw.pop("env", {})}, **kw)

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run_on("ctl", "scontrol", *args, check=check)

    def sbatch(self, *args: str, cwd: Path, env: dict | None = None) -> int:
        """Submit from the controller's host; returns the job id. `args`: sbatch options, the script, its args."""
        return int(self.run_on("ctl", "sbatch", "--parsable", *args, cwd=cwd, env=env or {}).stdout.split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, Reason, NodeList, ExitCode, Restarts, ..."""
        return dict(re.findall(r"(\w+)=(\S*)", self.scontrol("show", "job", "--oneliner", str(job_id)).stdout))

    def wait_job(self, job_id: int, states: set[str], timeout: float, poll: float = 0.5) -> dict[str, str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(poll)
        raise ClusterError(f"job {job_id} not {'/'.join(sorted(states))} after {timeout:.0f} s: {self.job(job_id)}")

    def node_state(self, node: str) -> str:
        return re.search(r"State=(\S+)", self.scontrol("show", "node", "--oneliner", node).stdout).group(1)

    def wait_nodes(self, state: str, timeout: float) -> None:
        self._wait_for(
            lambda: all(self.node_state(n).lower().startswith(state) for n in NODES), f"nodes {state}", timeout
        )

    def kill_node(self, node: str) -> None:
        """Power loss: the node drops off the network first (nothing more reaches its peers, not even a TCP
        reset), then everything on it dies: slurmd, slurmstepd, the launcher and the training ranks."""
        sh("ip", "-n", self.ns("ctl"), "link", "set", node, "down")
        kill_namespace(self.ns(node))
        proc = self.procs.pop(f"slurmd-{node}", None)
        if proc:
            proc.wait(timeout=10)

    def log(self, name: str) -> str:
        """A daemon's log: 'slurmctld', 'node1', 'node2'."""
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- helpers
    def _wait_for(self, cond, what: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise ClusterError(
                    f"{', '.join(dead)} exited while waiting for {what}; logs in {self.dir}:\n" + self._tails()
                )
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}; logs in {self.dir}:\n" + self._tails())

    def _tails(self) -> str:
        logs = [*sorted(self.dir.glob("*.log")), *sorted(self.dir.glob("*.stderr")), self.dir / "munge" / "munged.log"]
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in logs if p.exists())


def main() -> None:
    reason = unavailable()
    if reason:
        sys.exit(reason)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill <pid>` tears down too (finally below)
    with Cluster() as c:
        print(
            f"SLURM cluster up: {', '.join(f'{n} ({a})' for n, a in NODES.items())}, controller ctl ({CTL_ADDR})\n"
            f"files and logs: {c.dir}\n"
            f"run a command on a host (ctl, node1, node2) with its hostname and network:\n"
            f"  {c.on} ctl sbatch --nodes 2 launch/slurm/train.sbatch recipe=tiny_lora\n"
            f"  {c.on} node1 bash\n"
            f"Ctrl-C stops the cluster.",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
