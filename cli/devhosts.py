"""Separate hosts on one machine: a network namespace and a Docker daemon per node.

This is what `minisw dev up --hosts` builds, so that a node's death takes its containers with it
and every packet between nodes crosses a network, as between the VMs of `vagrant/`:

- a *switch* namespace holds a bridge; every host's ``eth0`` is a veth port on it, and a veth
  from this machine's namespace (the *uplink*, holding the subnet's first address) lets the CLI
  reach the managers. The bridge lives in a namespace of its own because bridged traffic in this
  machine's namespace would pass its FORWARD chain, which its own dockerd set to DROP;
- every host is a namespace with one address; its ``dockerd`` (own config file, data-root under
  the cluster's directory, exec-root, socket and pidfile under ``/run/msw<tag>/``) and its minisw
  processes are started inside it with ``nsenter --net`` (``ip netns exec`` would remount /sys and
  dockerd would lose the cgroups);
- every process of a host, its containers included (dockerd's ``cgroup-parent``), sits in one
  cgroup ``/minisw/<tag>/<node>``, so killing or pausing "the host" reaches all of it at once;
- cuts and partitions are one nftables table in the switch namespace, rewritten whole.

``<tag>`` is derived from the cluster's directory, so two clusters with different directories and
subnets run side by side. Nothing here is left behind by `dev down` (``leftovers`` checks).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_SUBNET", "HostError", "HostNet", "check_subnet", "python_minisw", "uplink_of"]

DEFAULT_SUBNET = "192.168.213.0/24"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PIDS = CGROUP_ROOT / "pids"
DOCKERD_READY_TIMEOUT = 30.0
DOCKERD_STOP_GRACE = 15.0
IMAGES = ("minisw/web:1", "minisw/web:2")


class HostError(Exception):
    """Something about the separate hosts that the operator must fix; the text says what."""


def _run(*args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, input=stdin)
    if check and result.returncode != 0:
        raise HostError(f"`{' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def check_subnet(text: str, own_link: str = "") -> ipaddress.IPv4Network:
    """A private IPv4 subnet with room for the nodes that no route of this machine covers
    (``own_link``'s routes are ours, from an earlier `dev up` of the same cluster)."""
    try:
        subnet = ipaddress.IPv4Network(text, strict=True)
    except ValueError as err:
        raise HostError(f'invalid subnet "{text}": {err}; give one like {DEFAULT_SUBNET}') from None
    if not subnet.is_private or subnet.prefixlen > 25:
        raise HostError(f"subnet {subnet} must be private (RFC 1918) and /25 or larger, e.g. {DEFAULT_SUBNET}")
    routes = json.loads(_run("ip", "-j", "route", "show").stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst == "default" or route.get("dev") == own_link:
            continue
        other = ipaddress.IPv4Network(dst if "/" in dst else f"{dst}/32", strict=False)
        if subnet.overlaps(other):
            raise HostError(
                f"subnet {subnet} overlaps this machine's route to {other} (dev {route.get('dev')}); "
                "choose another with --subnet"
            )
    return subnet


def tag_of(directory: str) -> str:
    return hashlib.sha1(os.path.abspath(directory).encode()).hexdigest()[:6]


def uplink_of(directory: str) -> str:
    """The cluster's link in this machine's namespace (at most 15 characters)."""
    return f"msw{tag_of(directory)}"


@dataclass(frozen=True)
class HostNet:
    """The namespaces, links, daemons and cgroups of one cluster's separate hosts."""

    directory: str
    subnet: ipaddress.IPv4Network

    # ---- names ---------------------------------------------------------------------------
    @property
    def tag(self) -> str:
        return tag_of(self.directory)

    @property
    def switch(self) -> str:
        return f"msw{self.tag}-switch"

    @property
    def uplink(self) -> str:
        return uplink_of(self.directory)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def run_dir(self) -> Path:
        return Path(f"/run/msw{self.tag}")

    def netns(self, node: str) -> str:
        return f"msw{self.tag}-{node}"

    def netns_path(self, node: str) -> str:
        return f"/run/netns/{self.netns(node)}"

    def port(self, node: str) -> str:
        return f"p-{node}"[:15]  # the node's port on the switch's bridge

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + index)

    def docker_dir(self, node: str) -> Path:
        return Path(self.directory, "hosts", node)

    def docker_host(self, node: str) -> str:
        return f"unix://{self.run_dir}/{node}.sock"

    def cgroup(self, node: str) -> str:
        return f"/minisw/{self.tag}/{node}"

    # ---- network -------------------------------------------------------------------------
    def _exists(self, netns: str) -> bool:
        return Path(f"/run/netns/{netns}").exists()

    def _in(self, netns: str, *args: str, check: bool = True, stdin: str | None = None) -> None:
        _run("nsenter", f"--net=/run/netns/{netns}", *args, check=check, stdin=stdin)

    def create_switch(self) -> None:
        if self._exists(self.switch):
            return
        _run("ip", "netns", "add", self.switch)
        sw = ("ip", "-n", self.switch)
        _run(*sw, "link", "set", "lo", "up")
        _run(*sw, "link", "add", "br0", "type", "bridge")
        _run(*sw, "link", "set", "br0", "up")
        _run("ip", "link", "add", self.uplink, "type", "veth", "peer", "name", "uplink", "netns", self.switch)
        _run(*sw, "link", "set", "uplink", "master", "br0", "up")
        _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.uplink)
        _run("ip", "link", "set", self.uplink, "up")

    def add_host(self, node: str, address: str) -> None:
        netns = self.netns(node)
        if self._exists(netns):
            return
        _run("ip", "netns", "add", netns)
        sw = ("ip", "-n", self.switch)
        _run(*sw, "link", "add", self.port(node), "type", "veth", "peer", "name", "eth0", "netns", netns)
        _run(*sw, "link", "set", self.port(node), "master", "br0", "up")
        host = ("ip", "-n", netns)
        _run(*host, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0")
        _run(*host, "link", "set", "eth0", "up")
        _run(*host, "link", "set", "lo", "up")
        _run(*host, "route", "add", "default", "via", self.gateway)

    # ---- the host's cgroup -----------------------------------------------------------------
    def _cgroup_dirs(self, node: str) -> list[Path]:
        """Every directory of the host's cgroup, in every controller, deepest first."""
        found: list[Path] = []
        if not CGROUP_ROOT.exists():
            return found
        for controller in CGROUP_ROOT.iterdir():
            top = controller / self.cgroup(node).lstrip("/")
            if top.is_dir():
                found += sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
                found.append(top)
        return found

    def pids(self, node: str) -> set[int]:
        """Every process of the host: its dockerd, containerd, shims, containers and minisw."""
        found: set[int] = set()
        top = PIDS / self.cgroup(node).lstrip("/")
        if not top.is_dir():
            return found
        for procs in [top / "cgroup.procs", *top.rglob("cgroup.procs")]:
            try:
                found.update(int(line) for line in procs.read_text().split())
            except OSError:
                continue
        return found

    def in_cgroup(self, node: str, command: list[str]) -> list[str]:
        """``command`` run inside the host: its cgroup first, then its network namespace."""
        top = PIDS / self.cgroup(node).lstrip("/")
        top.mkdir(parents=True, exist_ok=True)
        enter = 'echo $$ > "$0" && exec "$@"'  # join the cgroup before anything forks
        return ["sh", "-c", enter, str(top / "cgroup.procs"), "nsenter", f"--net={self.netns_path(node)}", *command]

    def signal_all(self, node: str, sig: signal.Signals) -> int:
        pids = self.pids(node)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return len(pids)

    def kill(self, node: str, timeout: float = 10.0) -> int:
        """SIGKILL every process of the host, repeating until none is left (one may fork meanwhile)."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.pids(node)
            if not pids:
                return len(killed)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)  # a paused process dies only once it runs
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            killed |= pids
            time.sleep(0.05)
        raise HostError(f"processes {sorted(self.pids(node))} of host {node} survived SIGKILL")

    # ---- the host's Docker daemon -------------------------------------------------------
    def dockerd_running(self, node: str) -> bool:
        pid = self.dockerd_pid(node)
        return bool(pid) and pid in self.pids(node)

    def dockerd_pid(self, node: str) -> int:
        try:
            return int((self.run_dir / f"{node}.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def start_dockerd(self, node: str) -> list[str]:
        """The command that starts the host's dockerd; the caller spawns it (see ``in_cgroup``)."""
        data = self.docker_dir(node)
        data.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config = data / "daemon.json"
        # A config file of its own: the machine's daemon.json sets data-root, which a second flag
        # for it contradicts. The cgroup parent puts the containers into the host's cgroup.
        # userland-proxy off: hairpin mode on the bridge ports, so a task can reach a VIP that lands
        # on itself or a neighbour (the nftables table masquerades that path)
        config.write_text(json.dumps({"cgroup-parent": self.cgroup(node), "userland-proxy": False}))
        # What a killed daemon left: dockerd (and the containerd it runs) refuse to start while a
        # pidfile names a live process, and after a SIGKILL that PID may belong to another one by
        # now; the runtime state of dead shims is garbage too. A host with no process left is
        # booting afresh, as a VM's /run after a reboot.
        (self.run_dir / f"{node}.sock").unlink(missing_ok=True)
        (self.run_dir / f"{node}.pid").unlink(missing_ok=True)
        exec_root = self.run_dir / node
        if exec_root.exists() and not self.pids(node):
            for target in self._mounts():
                if target.startswith(f"{exec_root}/"):
                    _run("umount", "-l", target, check=False)
            _run("rm", "-rf", str(exec_root), check=False)
        return self.in_cgroup(
            node,
            [
                "dockerd",
                "--config-file", str(config),
                "--data-root", str(data / "docker"),
                "--exec-root", str(self.run_dir / node),
                "-H", self.docker_host(node),
                "--pidfile", str(self.run_dir / f"{node}.pid"),
            ],
        )  # fmt: skip

    def wait_dockerd(self, node: str, timeout: float = DOCKERD_READY_TIMEOUT) -> None:
        import docker

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            client = None
            try:
                client = docker.DockerClient(base_url=self.docker_host(node), timeout=2)
                client.ping()
                return
            except Exception as err:  # not listening yet
                last = str(err)
            finally:
                if client is not None:
                    client.close()
            time.sleep(0.1)
        log = self.docker_dir(node) / "dockerd.log"
        raise HostError(f"the Docker daemon of {node} did not answer within {timeout:.0f}s ({last}); see {log}")

    def load_images(self, node: str) -> list[str]:
        """Copy the demo images into the host's daemon (from a cache of `docker save`)."""
        import docker

        machine = docker.from_env()
        host = docker.DockerClient(base_url=self.docker_host(node), timeout=60)
        try:
            wanted = {name: machine.images.get(name).id for name in IMAGES}
            have = {name for name, image_id in wanted.items() if _image_id(host, name) == image_id}
            missing = [name for name in IMAGES if name not in have]
            if missing:
                cache = self._image_cache(wanted)
                with open(cache, "rb") as tar:
                    host.images.load(tar.read())
            return missing
        finally:
            host.close()
            machine.close()

    def _image_cache(self, wanted: dict[str, str]) -> Path:
        """One `docker save` of the demo images, named for their IDs, so restarts skip it."""
        digest = hashlib.sha1(" ".join(sorted(wanted.values())).encode()).hexdigest()[:12]
        cache = Path(self.directory, "image-cache", f"{digest}.tar")
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            for old in cache.parent.glob("*.tar"):
                old.unlink()
            with open(cache.with_suffix(".tmp"), "wb") as out:
                subprocess.run(["docker", "save", *IMAGES], stdout=out, check=True)
            os.replace(cache.with_suffix(".tmp"), cache)
        return cache

    def stop_dockerd(self, node: str) -> None:
        if self.dockerd_running(node):
            pid = self.dockerd_pid(node)
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + DOCKERD_STOP_GRACE
            while pid in self.pids(node) and time.monotonic() < deadline:
                time.sleep(0.1)

    # ---- faults on the wire ------------------------------------------------------------------
    def _faults_file(self) -> Path:
        return Path(self.directory, "faults.json")

    def faults(self) -> dict[str, list[list[str]]]:
        path = self._faults_file()
        return json.loads(path.read_text()) if path.exists() else {"cut": [], "partitions": []}

    def set_faults(self, faults: dict[str, list[list[str]]]) -> None:
        """Rewrite the switch's drop rules at once: a cut host's port drops everything; a
        partition drops what goes between its two groups (each side still reaches its own)."""
        rules = []
        for (node,) in faults["cut"]:
            rules += [f'iifname "{self.port(node)}" drop', f'oifname "{self.port(node)}" drop']
        for side_a, side_b in faults["partitions"]:
            a = ", ".join(f'"{self.port(n)}"' for n in side_a.split(","))
            b = ", ".join(f'"{self.port(n)}"' for n in side_b.split(","))
            rules += [f"iifname {{ {a} }} oifname {{ {b} }} drop", f"iifname {{ {b} }} oifname {{ {a} }} drop"]
        body = "\n".join(f"    {r}" for r in rules)
        script = (
            "table bridge minisw_faults {}\ndelete table bridge minisw_faults\n"
            "table bridge minisw_faults {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n"
            f"{body}\n  }}\n}}\n"
        )
        self._in(self.switch, "nft", "-f", "-", stdin=script)
        path = self._faults_file()
        path.with_suffix(".tmp").write_text(json.dumps(faults))
        os.replace(path.with_suffix(".tmp"), path)

    # ---- teardown -----------------------------------------------------------------------------
    def _mounts(self) -> list[str]:
        roots = (os.path.abspath(self.directory) + "/hosts/", str(self.run_dir) + "/", f"/run/netns/msw{self.tag}-")
        found = []
        for line in Path("/proc/self/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(roots):
                found.append(target)
        return sorted(found, key=len, reverse=True)

    def remove(self, nodes: list[str]) -> None:
        """Everything `dev up --hosts` made but the cluster's state: processes (already stopped
        gracefully by the caller, killed here otherwise), mounts, cgroups, namespaces, links."""
        for node in nodes:
            self.kill(node)
        for target in self._mounts():
            _run("umount", "-l", target, check=False)
        for node in nodes:
            for directory in self._cgroup_dirs(node):
                _rmdir(directory)
            if self._exists(self.netns(node)):
                _run("ip", "netns", "del", self.netns(node), check=False)
        for controller in CGROUP_ROOT.iterdir() if CGROUP_ROOT.exists() else []:
            for directory in (controller / "minisw" / self.tag, controller / "minisw"):
                _rmdir(directory)
        if self._exists(self.switch):
            _run("ip", "netns", "del", self.switch, check=False)  # takes the bridge and its ports
        if Path(f"/sys/class/net/{self.uplink}").exists():
            _run("ip", "link", "del", self.uplink, check=False)
        _run("rm", "-rf", str(self.run_dir), check=False)
        self._faults_file().unlink(missing_ok=True)

    def leftovers(self, nodes: list[str]) -> list[str]:
        """What of this cluster's hosts is still on the machine (empty after `dev down`)."""
        found = [f"namespace {ns}" for ns in _netns_names() if ns.startswith(f"msw{self.tag}-")]
        if Path(f"/sys/class/net/{self.uplink}").exists():
            found.append(f"link {self.uplink}")
        found += [f"mount {m}" for m in self._mounts()]
        for node in nodes:
            found += [f"cgroup {d}" for d in self._cgroup_dirs(node)]
            found += [f"process {pid} of {node}" for pid in self.pids(node)]
        if self.run_dir.exists():
            found.append(f"directory {self.run_dir}")
        return found


def _image_id(client: object, name: str) -> str:
    import docker.errors

    try:
        return str(client.images.get(name).id)  # type: ignore[attr-defined]
    except docker.errors.ImageNotFound:
        return ""


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _netns_names() -> list[str]:
    return sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []


def python_minisw() -> str:
    """How minisw-node.sh runs minisw from this interpreter (the one that runs the CLI)."""
    return f"{sys.executable} -m minisw.cli"
