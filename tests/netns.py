"""Several "hosts" on one machine: network namespaces on a bridge, for multi-host tests.

``with network(3) as net:`` creates, as root,

* a bridge ``bpbr<pid>`` in the root namespace with address ``10.77.S.254/24``;
* namespaces ``bp-<pid>-h1`` .. ``bp-<pid>-hN``, each with ``lo`` up and a veth pair:
  the host side ``bp<pid>h<i>`` enslaved to the bridge, the other side ``eth0`` inside
  the namespace with address ``10.77.S.<i>/24``.

``S`` is 0 unless another run holds that subnet (each run locks one: parallel runs do
not clash), so the hosts normally are 10.77.0.1 .. 10.77.0.N. The test process stays
in the root namespace and reaches every host through the bridge.

``net.spawn(i, argv)`` runs ``ip netns exec bp-<pid>-h<i> argv...``; ``net.cut(i)`` sets
the host side of host i's veth DOWN, so its packets are silently dropped (no RST, no
ICMP: a pulled cable) until ``net.restore(i)``. ``net.write_hosts(i, {name: [ip, ...]})``
gives the programs spawned in host i their own ``/etc/hosts`` (``ip netns exec``
bind-mounts ``/etc/netns/<namespace>/hosts`` over it; the machine's ``/etc/hosts`` is
never touched), so a name can resolve to several hosts, like a DNS name with several
A records.

Everything is torn down on exit, after failures too (processes spawned and still
running are killed first). Leftovers of an earlier run that crashed (named after a pid
that no longer runs) are removed before anything is created. Without root, without
``ip``, or when the kernel refuses a namespace, the calling test is skipped with the
exact reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

SKIP_REASON = "needs root for network namespaces (ip netns, veth)"
SUBNET_BASE = "10.77"
MAX_HOSTS = 250
IP_TIMEOUT_SECS = 10.0
KILL_TIMEOUT_SECS = 10.0

NETNS_ETC = Path("/etc/netns")

_NAMESPACE = re.compile(r"^bp-(\d+)-h\d+$")
_LINK = re.compile(r"^(?:bpbr(\d+)|bp(\d+)h\d+)$")


class NetnsError(RuntimeError):
    """An ``ip`` command failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["ip", *args], capture_output=True, text=True, check=False, timeout=IP_TIMEOUT_SECS
    )
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise NetnsError(f"`ip {' '.join(args)}` failed with status {result.returncode}: {detail}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(pid: int) -> bool:
    """Names carrying our own pid are leftovers too (a dead run had this pid)."""
    return pid == os.getpid() or not _pid_alive(pid)


def _namespaces() -> list[str]:
    result = _ip("netns", "list", check=False)
    # Lines look like "bp-123-h1 (id: 4)" or just "bp-123-h1".
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    result = _ip("-o", "link", "show", check=False)
    names = []
    for line in result.stdout.splitlines():
        # "12: bp123h1@if11: <BROADCAST,...> ..."
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def clean_stale() -> list[str]:
    """Deletes namespaces and links of earlier runs whose process is gone; returns
    what it deleted."""
    removed = []
    for name in _namespaces():
        match = _NAMESPACE.match(name)
        if match and _stale(int(match.group(1))):
            _ip("netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for name in _links():
        match = _LINK.match(name)
        if match and _stale(int(match.group(1) or match.group(2))):
            _ip("link", "del", name, check=False)
            removed.append(f"link {name}")
    if NETNS_ETC.is_dir():
        for path in NETNS_ETC.iterdir():
            match = _NAMESPACE.match(path.name)
            if match and _stale(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"directory {path}")
    return removed


def _subnet_in_use(subnet: str) -> bool:
    result = _ip("-o", "-4", "addr", "show", check=False)
    return f" {subnet}." in result.stdout


class _SubnetLock:
    """One run's claim on ``10.77.S.0/24`` (an flock, released when the process dies)."""

    def __init__(self) -> None:
        self.subnet = ""
        self._file: Any = None
        lock_dir = Path(tempfile.gettempdir())
        for index in range(256):
            candidate = f"{SUBNET_BASE}.{index}"
            handle = (lock_dir / f"blazen-peer-netns-{candidate}.lock").open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            if _subnet_in_use(candidate):
                handle.close()
                continue
            self.subnet, self._file = candidate, handle
            return
        raise NetnsError(f"no free subnet {SUBNET_BASE}.0-255.0/24 (all locked or in use)")

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Network:
    """The bridge and the hosts; see the module docstring."""

    def __init__(self, hosts: int, subnet: str) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, got {hosts}")
        pid = os.getpid()
        self.hosts = hosts
        self.subnet = subnet
        self.bridge = f"bpbr{pid}"
        self._pid = pid
        self._procs: list[subprocess.Popen[Any]] = []
        self._created_netns_etc = False

    # --- names and addresses ---

    def namespace(self, i: int) -> str:
        self._check(i)
        return f"bp-{self._pid}-h{i}"

    def host_veth(self, i: int) -> str:
        self._check(i)
        return f"bp{self._pid}h{i}"

    def addr(self, i: int) -> str:
        """Host i's address, ``10.77.S.i``."""
        self._check(i)
        return f"{self.subnet}.{i}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge, ``10.77.S.254``."""
        return f"{self.subnet}.254"

    def _check(self, i: int) -> None:
        if not 1 <= i <= self.hosts:
            raise ValueError(f"host index must be 1..{self.hosts}, got {i}")

    # --- lifecycle ---

    def create(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.hosts + 1):
            ns, veth = self.namespace(i), self.host_veth(i)
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # Both ends are created in the root namespace, then one moves (and is renamed).
            peer = f"{veth}p"
            _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", ns)
            _ip("-n", ns, "link", "set", peer, "name", "eth0")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("link", "set", veth, "master", self.bridge)
            _ip("link", "set", veth, "up")

    def teardown(self) -> list[str]:
        """Kills what `spawn` started and is still running, deletes the namespaces, the
        veths and the bridge; never raises. Returns what went wrong, if anything."""
        problems = []
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=KILL_TIMEOUT_SECS)
                except subprocess.TimeoutExpired:
                    problems.append(f"process {proc.pid} did not die after SIGKILL")
        existing_ns, existing_links = set(_namespaces()), set(_links())
        for i in range(1, self.hosts + 1):
            ns, veth = self.namespace(i), self.host_veth(i)
            if ns in existing_ns:
                result = _ip("netns", "del", ns, check=False)
                if result.returncode != 0:
                    problems.append(f"netns del {ns}: {result.stderr.strip()}")
            for link in (veth, f"{veth}p"):
                if link in existing_links:
                    # Deleting the namespace normally took the pair with it already.
                    _ip("link", "del", link, check=False)
        if self.bridge in existing_links:
            result = _ip("link", "del", self.bridge, check=False)
            if result.returncode != 0:
                problems.append(f"link del {self.bridge}: {result.stderr.strip()}")
        for i in range(1, self.hosts + 1):
            etc = NETNS_ETC / self.namespace(i)
            if etc.exists():
                try:
                    shutil.rmtree(etc)
                except OSError as exc:
                    problems.append(f"removing {etc}: {exc}")
        if self._created_netns_etc:
            with contextlib.suppress(OSError):  # not empty: another run uses it now
                NETNS_ETC.rmdir()
        return problems

    # --- what tests do ---

    def spawn(self, i: int, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Runs ``argv`` inside host i (``ip netns exec``); the process is the program
        itself (``ip`` execs it), so signals sent to it reach the program."""
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace(i), *argv], **popen_kwargs
        )
        self._procs.append(proc)
        return proc

    def write_hosts(self, i: int, names: Mapping[str, Sequence[str]]) -> Path:
        """Sets the ``/etc/hosts`` that programs spawned in host i from now on see (and,
        since the file is rewritten in place, those already running): ``localhost``
        plus each name on one line per address, in the order given."""
        if not NETNS_ETC.exists():
            NETNS_ETC.mkdir()
            self._created_netns_etc = True
        etc = NETNS_ETC / self.namespace(i)
        etc.mkdir(exist_ok=True)
        lines = ["127.0.0.1 localhost"]
        lines += [f"{address} {name}" for name, addresses in names.items() for address in addresses]
        path = etc / "hosts"
        with path.open("r+" if path.exists() else "w") as hosts:
            hosts.write("\n".join(lines) + "\n")
            hosts.truncate()
        return path

    def cut(self, i: int) -> None:
        """Pulls host i's cable: its host-side veth goes DOWN, packets vanish silently."""
        _ip("link", "set", self.host_veth(i), "down")

    def restore(self, i: int) -> None:
        """Plugs host i's cable back in."""
        _ip("link", "set", self.host_veth(i), "up")

    def is_cut(self, i: int) -> bool:
        """True while host i's host-side veth is administratively DOWN."""
        result = _ip("-o", "link", "show", self.host_veth(i))
        flags = result.stdout.split("<", 1)[-1].split(">", 1)[0].split(",")
        return "UP" not in flags


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (None: they can, probably)."""
    if os.geteuid() != 0:
        return f"{SKIP_REASON}: not running as root (euid {os.geteuid()})"
    if shutil.which("ip") is None:
        return f"{SKIP_REASON}: the `ip` command (iproute2) is not installed"
    return None


@contextlib.contextmanager
def network(hosts: int) -> Iterator[Network]:
    """Creates the bridge and ``hosts`` namespaces; tears them down on exit. Skips the
    calling test (pytest.skip) when namespaces are unavailable, saying why."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    clean_stale()
    try:
        lock = _SubnetLock()
    except NetnsError as exc:
        pytest.skip(f"{SKIP_REASON}: {exc}")
    net = Network(hosts, lock.subnet)
    try:
        try:
            net.create()
        except (NetnsError, OSError, subprocess.SubprocessError) as exc:
            problems = net.teardown()
            suffix = f" (teardown: {'; '.join(problems)})" if problems else ""
            pytest.skip(f"{SKIP_REASON}: creating the namespaces failed: {exc}{suffix}")
        yield net
    finally:
        problems = net.teardown()
        lock.release()
    if problems:
        raise NetnsError(f"tearing down the namespaces failed: {'; '.join(problems)}")
