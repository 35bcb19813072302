"""A real Kubernetes cluster on loopback for the end-to-end suite and the benchmarks.

Every component is the real one, built from the ``k8s.io/kubernetes`` Go module by
``tests/e2e/cluster/build``: etcd (Debian's ``etcd-server``), kube-apiserver with
certificates made here, kube-controller-manager, kube-scheduler with the project's
KubeSchedulerConfiguration from ``manifests/`` (only the extender's address changed),
and one or more real kubelets, each over Kubernetes' own fake CRI runtime (``fakecri``:
admits pods, runs nothing) with the real ``gputopo-device-plugin`` (fake NVML on a
preset) beside it, and the real ``gputopo-extender`` in API mode.

The kubelet always serves its device-plugin and PodResources sockets under
``/var/lib/kubelet`` whatever ``--root-dir`` says, so each kubelet runs in a mount
namespace of its own (``unshare --mount``) where its root directory is bind-mounted on
``/var/lib/kubelet``; the plugin outside reaches the same sockets by the real path. The
kubelet starts in an empty working directory of its own: it deletes ``<log path>*`` when
it removes a container, and a runtime that reports an empty log path would make that the
working directory's files.

Nothing here sleeps a fixed time: every wait polls a condition until a deadline and,
when it fails, says what it waited for and shows the tail of each component's log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

__all__ = [
    "REPO",
    "ClusterSpec",
    "E2EUnavailable",
    "LocalCluster",
    "NodeSpec",
    "Process",
    "find_tools",
    "wait_for",
]

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tests" / "e2e" / "cluster" / "build"
KUBELET_FIXED_DIR = Path("/var/lib/kubelet")
ADMIN_TOKEN = "gputopo-e2e-admin-token"  # loopback only, made per run below
#: What the suite needs of the controller-manager: the node lifecycle (lifts a new node's
#: not-ready taint), service accounts and the CA bundle every pod mounts, garbage
#: collection (a GPUTopology object goes with its Node), and the workload controllers
#: the install checks apply. Leaving the rest out keeps two cores free for the tests.
_CONTROLLERS = (
    "node-lifecycle-controller", "serviceaccount-controller", "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller", "garbage-collector-controller",
    "namespace-controller", "pod-garbage-collector-controller", "daemonset-controller",
    "deployment-controller", "replicaset-controller",
)
_T = TypeVar("_T")


class E2EUnavailable(RuntimeError):
    """What the suite needs cannot be had here (the message says what and why)."""


# -- waiting --------------------------------------------------------------------------
def wait_for(
    what: str, probe: Callable[[], _T | None], *, timeout: float = 60.0,
    on_timeout: Callable[[], str] | None = None,
) -> _T:
    """Poll ``probe`` until it returns something other than None/False; that value.

    Polls fast at first, then every 0.5 s. On timeout raises ``TimeoutError`` naming
    ``what``, with ``on_timeout()`` (component logs) appended.
    """
    deadline = time.monotonic() + timeout
    delay = 0.02
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except Exception as e:  # a component not up yet answers with errors
            last_error = e
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            extra = ("\n" + on_timeout()) if on_timeout else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{detail}{extra}")
        time.sleep(delay)
        delay = min(0.5, delay * 1.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- tools ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Tools:
    bin: Path
    etcd: Path
    openssl: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bin / name)


def find_tools(*, build: bool = True) -> Tools:
    """The built Kubernetes commands (building them once, cached), etcd and openssl.

    Raises :class:`E2EUnavailable` with the reason when something cannot be had.
    """
    if os.geteuid() != 0:
        raise E2EUnavailable("the kubelet needs root (mount namespaces, cgroups); run as root")
    for tool in ("unshare", "mount", "umount"):
        if shutil.which(tool) is None:
            raise E2EUnavailable(f"'{tool}' is not on PATH (util-linux)")
    etcd = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if etcd is None:
        raise E2EUnavailable("etcd is not installed (Debian: apt-get install etcd-server)")
    openssl = shutil.which("openssl")
    if openssl is None:
        raise E2EUnavailable("openssl is not installed")
    if shutil.which("go") is None:
        raise E2EUnavailable("Go is not installed: the Kubernetes components are built from "
                             "their Go module (Go 1.26)")
    env = dict(os.environ)
    proc = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise E2EUnavailable(f"building the Kubernetes components failed "
                             f"(rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    bin_dir = Path(proc.stdout.strip().splitlines()[-1])
    return Tools(bin=bin_dir, etcd=Path(etcd), openssl=Path(openssl))


# -- processes ------------------------------------------------------------------------
class Process:
    """One component: started with its log in a file, stopped with its whole group."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, *,
                 cwd: Path | None = None, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> Process:
        if self.alive():
            return self
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open by the child)
        log.write(f"\n===== start {self.starts}: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.cwd, env=self.env, start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} not started"
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, *, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.popen.wait(10)
        # Whatever the group left behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.popen is not None and self.alive():
            self.signal(signal.SIGKILL)
            self.popen.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"--- {self.name}: no log"
        return f"--- {self.name} ({self.log_path}), last {lines} lines:\n" + "\n".join(
            text[-lines:])

    def cpu_seconds(self) -> float:
        """User + system CPU of the process (and its reaped children) from /proc."""
        if not self.alive():
            return 0.0
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


# -- certificates -----------------------------------------------------------------------
class Pki:
    """A CA, the API server's serving certificate, and the service-account key pair."""

    def __init__(self, directory: Path, openssl: Path) -> None:
        self.dir = directory
        self.openssl = str(openssl)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_crt = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.ca_key,
                  "-out", self.ca_crt, "-days", "7", "-subj", "/CN=gputopo-e2e-ca")
        self._run("genrsa", "-out", self.sa_key, "2048")
        self._run("rsa", "-in", self.sa_key, "-pubout", "-out", self.sa_pub)

    def _run(self, *args: object) -> None:
        subprocess.run([self.openssl, *map(str, args)], check=True, capture_output=True)

    def issue(self, name: str, *, cn: str, org: str = "", sans: Sequence[str] = (),
              client: bool = False) -> tuple[Path, Path]:
        """A key and a certificate signed by the CA: (cert, key)."""
        key, csr, crt = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        subj = f"/CN={cn}" + (f"/O={org}" if org else "")
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
                  "-subj", subj)
        ext = self.dir / f"{name}.ext"
        usage = "clientAuth" if client else "serverAuth"
        lines = [f"extendedKeyUsage={usage}", "keyUsage=digitalSignature,keyEncipherment"]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        self._run("x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", self.ca_key,
                  "-CAcreateserial", "-out", crt, "-days", "7", "-extfile", ext)
        return crt, key


# -- the cluster --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class NodeSpec:
    """A real kubelet with the project's device plugin on a fake-NVML preset."""

    name: str
    preset: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterSpec:
    nodes: tuple[NodeSpec, ...] = ()
    #: Run the project's extender (API mode) and kube-scheduler with it.
    extender: bool = True
    scheduler: bool = True
    #: The controller-manager lifts the new nodes' not-ready taint (node lifecycle),
    #: makes service accounts, and collects GPUTopology objects of deleted nodes.
    controller_manager: bool = True
    #: kube-scheduler's own client rate limit (its default is 50 qps, burst 100).
    scheduler_qps: float = 50.0
    scheduler_burst: int = 100
    extender_args: tuple[str, ...] = ()
    #: How often each kubelet posts node status (shorter than the 10 s default, so
    #: capacity changes reach the Node sooner; tests still wait for them).
    node_status_s: int = 2


@dataclass(slots=True)
class KubeletNode:
    spec: NodeSpec
    root: Path
    cri: Process
    kubelet: Process
    plugin: Process
    kubelet_port: int
    healthz_port: int
    plugin_metrics_port: int

    @property
    def device_plugin_dir(self) -> Path:
        return self.root / "kubelet" / "device-plugins"

    @property
    def pod_resources_socket(self) -> Path:
        return self.root / "kubelet" / "pod-resources" / "kubelet.sock"

    @property
    def plugin_socket(self) -> Path:
        return self.device_plugin_dir / "gputopo-nvidia.com-gpu.sock"


@dataclass
class LocalCluster:
    """Start with :meth:`up`, stop with :meth:`down` (also on failure)."""

    spec: ClusterSpec
    workdir: Path
    tools: Tools
    processes: list[Process] = field(default_factory=list)
    nodes: dict[str, KubeletNode] = field(default_factory=dict)
    made_kubelet_dir: bool = False

    # -- layout ------------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    def component(self, name: str) -> Process:
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(name)

    def diagnostics(self, lines: int = 30) -> str:
        return "\n".join(p.tail(lines) for p in self.processes)

    # -- bring-up ----------------------------------------------------------------------
    def up(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        try:
            self._control_plane()
            if self.spec.controller_manager:
                self._controller_manager()
            self._apply_crd()
            if self.spec.extender:
                self._extender()
            if self.spec.scheduler:
                self._scheduler(with_extender=self.spec.extender)
            for n in self.spec.nodes:
                self.add_node(n)
            for n in self.spec.nodes:
                self.wait_node_ready(n.name)
            if self.spec.extender:
                self.wait_extender_ready()
        except BaseException:
            print(self.diagnostics(), file=sys.stderr)
            self.down()
            raise
        return self

    def _control_plane(self) -> None:
        pki = self.pki = Pki(self.workdir / "pki", self.tools.openssl)
        self.api_port = free_port()
        self.api_crt, self.api_key = pki.issue(
            "apiserver", cn="kube-apiserver",
            sans=["IP:127.0.0.1", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
                  "DNS:kubernetes.default.svc", "IP:10.0.0.1"])
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{ADMIN_TOKEN},gputopo-e2e-admin,admin,"system:masters"\n')
        self._write_kubeconfig(self.kubeconfig, token=ADMIN_TOKEN)

        etcd_port, peer_port = free_port(), free_port()
        self.etcd = self._proc("etcd", [
            str(self.tools.etcd), "--name", "e2e", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"e2e=http://127.0.0.1:{peer_port}",
            "--quota-backend-bytes", str(4 << 30), "--log-level", "warn",
        ])
        self.etcd.start()
        self.etcd_url = f"http://127.0.0.1:{etcd_port}"
        wait_for("etcd health", lambda: _http_ok(f"{self.etcd_url}/health"), timeout=30,
                 on_timeout=lambda: self.etcd.tail())

        self.apiserver = self._proc("kube-apiserver", [
            self.tools["kube-apiserver"],
            "--etcd-servers", self.etcd_url,
            "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
            "--secure-port", str(self.api_port),
            "--tls-cert-file", str(self.api_crt), "--tls-private-key-file", str(self.api_key),
            "--client-ca-file", str(pki.ca_crt),
            "--token-auth-file", str(tokens),
            "--authorization-mode", "Node,RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki.sa_pub),
            "--service-account-signing-key-file", str(pki.sa_key),
            "--service-cluster-ip-range", "10.0.0.0/24",
            "--cert-dir", str(self.workdir / "apiserver-certs"),
            "--enable-priority-and-fairness=false",
            "--endpoint-reconciler-type", "none",  # loopback cannot be an Endpoints address
            "--profiling=false", "--v=1",
        ])
        self.apiserver.start()
        self.wait_apiserver()

    def wait_apiserver(self, timeout: float = 90.0) -> None:
        wait_for("kube-apiserver /readyz", lambda: self._api_ok("/readyz"), timeout=timeout,
                 on_timeout=lambda: self.apiserver.tail())

    def _api_ok(self, path: str) -> bool:
        try:
            self.api("GET", path, raw=True)
            return True
        except (urllib.error.URLError, OSError, ApiStatus):
            return False

    def _write_kubeconfig(self, path: Path, *, token: str) -> None:
        cfg = {
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": f"https://127.0.0.1:{self.api_port}",
                "certificate-authority": str(self.pki.ca_crt)}}],
            "users": [{"name": "e2e", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
            "current-context": "e2e",
        }
        path.write_text(yaml.safe_dump(cfg))

    def kubeconfig_for(self, name: str, token: str) -> Path:
        path = self.workdir / f"{name}.kubeconfig"
        self._write_kubeconfig(path, token=token)
        return path

    def _proc(self, name: str, argv: Sequence[str], **kw: Any) -> Process:
        p = Process(name, argv, self.logs, **kw)
        self.processes.append(p)
        return p

    def _controller_manager(self) -> None:
        self.controller_manager = self._proc("kube-controller-manager", [
            self.tools["kube-controller-manager"],
            "--kubeconfig", str(self.kubeconfig),
            "--leader-elect=false",
            "--service-account-private-key-file", str(self.pki.sa_key),
            "--root-ca-file", str(self.pki.ca_crt),
            "--use-service-account-credentials=false",
            "--controllers", ",".join(_CONTROLLERS),
            "--node-monitor-grace-period", "40s",
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()),
            "--v=1",
        ])
        self.controller_manager.start()

    def _apply_crd(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" /
                                                         "crd-gputopology.yaml"))
        wait_for("the GPUTopology CRD to be served",
                 lambda: self._api_ok("/apis/gputopo.io/v1alpha1/gputopologies"), timeout=60,
                 on_timeout=self.diagnostics)

    # -- extender and scheduler --------------------------------------------------------
    def _extender(self, *extra_args: str) -> None:
        self.extender_port = free_port()
        self.extender = self._proc("gputopo-extender", [
            str(Path(sys.executable).parent / "gputopo-extender"),
            "--kubeconfig", str(self.kubeconfig),
            "--host", "127.0.0.1", "--port", str(self.extender_port),
            "--lease-namespace", "kube-system", "--identity", "e2e-extender",
            *self.spec.extender_args, *extra_args,
        ])
        self.extender.start()

    @property
    def extender_url(self) -> str:
        return f"http://127.0.0.1:{self.extender_port}"

    def wait_extender_ready(self, timeout: float = 60.0) -> None:
        wait_for("gputopo-extender /readyz",
                 lambda: _http_ok(f"{self.extender_url}/readyz"), timeout=timeout,
                 on_timeout=lambda: self.extender.tail())

    def scheduler_config(self, *, with_extender: bool, prioritize: bool = True
                         ) -> dict[str, Any]:
        """The KubeSchedulerConfiguration shipped in manifests/, pointed at this cluster
        (without ``prioritizeVerb`` for an extender run with ``--filter-top-scored``)."""
        cm = yaml.safe_load((REPO / "manifests" / "scheduler-config.yaml").read_text())
        cfg: dict[str, Any] = yaml.safe_load(cm["data"]["config.yaml"])
        cfg["leaderElection"] = {"leaderElect": False}
        cfg["clientConnection"] = {"kubeconfig": str(self.kubeconfig),
                                   "qps": self.spec.scheduler_qps,
                                   "burst": self.spec.scheduler_burst}
        if with_extender:
            for ext in cfg.get("extenders") or []:
                ext["urlPrefix"] = self.extender_url
                if not prioritize:
                    ext.pop("prioritizeVerb", None)
        else:
            cfg.pop("extenders", None)
        return cfg

    def _scheduler(self, *, with_extender: bool, prioritize: bool = True) -> None:
        path = self.workdir / "scheduler-config.yaml"
        path.write_text(yaml.safe_dump(self.scheduler_config(with_extender=with_extender,
                                                             prioritize=prioritize)))
        self.scheduler = self._proc("kube-scheduler", [
            self.tools["kube-scheduler"], "--config", str(path),
            "--bind-address", "127.0.0.1", "--secure-port", str(free_port()), "--v=2",
            # Loopback only: its CPU profile can be taken without credentials (benchmarks).
            "--authorization-always-allow-paths",
            "/healthz,/readyz,/livez,/metrics,/debug/pprof/profile",
        ])
        self.scheduler.start()

    def restart_scheduler(self, *, with_extender: bool, prioritize: bool = True) -> None:
        """Stop kube-scheduler and start it again with or without the extender (and
        without its ``prioritizeVerb``)."""
        self.scheduler.stop()
        self.processes.remove(self.scheduler)
        self._scheduler(with_extender=with_extender, prioritize=prioritize)

    def restart_extender(self, *extra_args: str) -> None:
        """Stop the extender and start it again with ``extra_args`` (on a new port: restart
        the scheduler after it)."""
        self.extender.stop()
        self.processes.remove(self.extender)
        self._extender(*extra_args)
        self.wait_extender_ready(timeout=90)

    # -- nodes -------------------------------------------------------------------------
    def add_node(self, n: NodeSpec) -> KubeletNode:
        root = self.workdir / "nodes" / n.name
        for sub in ("kubelet/device-plugins", "kubelet/pod-resources", "pods-logs", "certs",
                    "cwd", "cri-fs"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        cwd = root / "cwd"
        if any(cwd.iterdir()):
            raise RuntimeError(f"refusing to start the kubelet of {n.name}: its working "
                               f"directory {cwd} is not empty")
        if not KUBELET_FIXED_DIR.exists():
            KUBELET_FIXED_DIR.mkdir(parents=True)
            self.made_kubelet_dir = True
        cri_sock = root / "cri.sock"
        kubelet_port, healthz_port = free_port(), free_port()
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": "127.0.0.1", "port": kubelet_port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False},
                               "x509": {}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False, "enforceNodeAllocatable": [],
            "failSwapOn": False, "failCgroupV1": False,
            "containerRuntimeEndpoint": f"unix://{cri_sock}",
            "imageServiceEndpoint": f"unix://{cri_sock}",
            "podLogsDir": str(root / "pods-logs"),
            "nodeStatusUpdateFrequency": f"{self.spec.node_status_s}s",
            "nodeStatusReportFrequency": f"{self.spec.node_status_s}s",
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
                             "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False, "registerNode": True,
            "resolvConf": "",
        }
        (root / "kubelet.yaml").write_text(yaml.safe_dump(config))
        kubelet_root = root / "kubelet"
        cri = self._proc(f"fakecri-{n.name}", [
            self.tools["fakecri"], "--listen", str(cri_sock), "--fs-root", str(root / "cri-fs"),
        ])
        kubelet_argv = [
            self.tools["kubelet"], "--config", str(root / "kubelet.yaml"),
            "--kubeconfig", str(self.kubeconfig),
            "--hostname-override", n.name, "--node-ip", "127.0.0.1",
            "--root-dir", str(kubelet_root), "--cert-dir", str(root / "certs"), "--v=2",
        ]
        # Its own mount namespace: its root directory is /var/lib/kubelet there only.
        kubelet = self._proc(f"kubelet-{n.name}", [
            "unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
            'mount --bind "$0" /var/lib/kubelet && exec "$@"', str(kubelet_root),
            *kubelet_argv,
        ], cwd=cwd)
        metrics_port = free_port()
        plugin = self._proc(f"plugin-{n.name}", [
            str(Path(sys.executable).parent / "gputopo-device-plugin"),
            "--node-name", n.name, "--fake-topology", n.preset,
            "--kubelet-dir", str(kubelet_root / "device-plugins"),
            "--pod-resources-socket", str(kubelet_root / "pod-resources" / "kubelet.sock"),
            "--kubeconfig", str(self.kubeconfig),
            "--metrics-port", str(metrics_port),
            "--reconcile-interval-seconds", "5",
        ])
        node = KubeletNode(spec=n, root=root, cri=cri, kubelet=kubelet, plugin=plugin,
                           kubelet_port=kubelet_port, healthz_port=healthz_port,
                           plugin_metrics_port=metrics_port)
        self.nodes[n.name] = node
        cri.start()
        wait_for(f"fake CRI socket of {n.name}", lambda: cri_sock.exists(), timeout=30,
                 on_timeout=cri.tail)
        kubelet.start()
        plugin.start()
        return node

    def wait_node_ready(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            node = self.api("GET", f"/api/v1/nodes/{name}")
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            taints = node["spec"].get("taints") or []
            if conds.get("Ready") == "True" and not any(
                    t["key"] == "node.kubernetes.io/not-ready" for t in taints):
                return node
            return None

        return wait_for(f"node {name} Ready and untainted", ready, timeout=timeout,
                        on_timeout=self.diagnostics)

    def gpu_capacity(self, name: str) -> int:
        node = self.api("GET", f"/api/v1/nodes/{name}")
        return int(node["status"].get("allocatable", {}).get("nvidia.com/gpu", "0"))

    def restart_kubelet(self, name: str) -> None:
        node = self.nodes[name]
        node.kubelet.stop()
        node.kubelet.start()

    # -- teardown ----------------------------------------------------------------------
    def down(self) -> None:
        # Reverse order: the daemons before the control plane they talk to.
        for p in reversed(self.processes):
            with contextlib.suppress(Exception):
                p.stop()
        if self.made_kubelet_dir:
            with contextlib.suppress(OSError):
                KUBELET_FIXED_DIR.rmdir()
            self.made_kubelet_dir = False

    # -- API access --------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext:
        ctx = getattr(self, "_ssl_ctx", None)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
            self._ssl_ctx = ctx
        return ctx

    def api(self, method: str, path: str, body: Any = None, *, raw: bool = False,
            content_type: str = "application/json", timeout: float = 30.0,
            token: str = ADMIN_TOKEN) -> Any:
        """One request to the API server as the admin; the decoded JSON answer."""
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(
            f"https://127.0.0.1:{self.api_port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type,
                     "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self._ssl(), timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiStatus(e.code, e.read().decode(errors="replace")) from None
        if raw:
            return payload
        return json.loads(payload) if payload else None

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.tools["kubectl"], "--kubeconfig", str(self.kubeconfig), *args],
            input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed (rc={proc.returncode}):\n"
                               f"{proc.stderr}{proc.stdout}")
        return proc

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}"))

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return list(self.api("GET", f"/api/v1/namespaces/{namespace}/pods")["items"])

    def events_for(self, namespace: str, name: str) -> list[dict[str, Any]]:
        q = f"involvedObject.name={name},involvedObject.kind=Pod"
        out = self.api("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector="
                       + urllib.request.quote(q))
        return list(out["items"])

    def ensure_namespace(self, name: str) -> None:
        with contextlib.suppress(ApiStatus):
            self.api("POST", "/api/v1/namespaces",
                     {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        # The ServiceAccount admission plugin refuses pods until "default" exists: the
        # controller-manager makes it, or (when none runs) we do.
        if not self.spec.controller_manager:
            with contextlib.suppress(ApiStatus):
                self.api("POST", f"/api/v1/namespaces/{name}/serviceaccounts", {
                    "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "default"}})
        wait_for(f"service account default in {name}",
                 lambda: self._api_ok(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
                 timeout=60, on_timeout=self.diagnostics)


class ApiStatus(Exception):
    """A non-2xx answer of the API server."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running(spec: ClusterSpec, workdir: Path, *, tools: Tools | None = None
            ) -> Iterator[LocalCluster]:
    cluster = LocalCluster(spec=spec, workdir=workdir, tools=tools or find_tools()).up()
    try:
        yield cluster
    finally:
        cluster.down()


# -- command line: tests/e2e/cluster/up and down ----------------------------------------
def _save_state(cluster: LocalCluster) -> Path:
    state = {
        "pids": {p.name: p.pid for p in cluster.processes if p.alive()},
        "kubeconfig": str(cluster.kubeconfig),
        "extender": cluster.extender_url if cluster.spec.extender else None,
        "made_kubelet_dir": cluster.made_kubelet_dir,
        "nodes": {name: {"preset": n.spec.preset, "device_plugins": str(n.device_plugin_dir),
                         "pod_resources": str(n.pod_resources_socket)}
                  for name, n in cluster.nodes.items()},
    }
    path = cluster.workdir / "state.json"
    path.write_text(json.dumps(state, indent=2))
    return path


def _down_from_state(workdir: Path) -> None:
    path = workdir / "state.json"
    if not path.exists():
        raise SystemExit(f"down: no {path}; nothing started there")
    state = json.loads(path.read_text())
    for name, pid in reversed(list(state["pids"].items())):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
            print(f"down: stopping {name} (pid {pid})")
    deadline = time.monotonic() + 20
    for pid in state["pids"].values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    if state.get("made_kubelet_dir"):
        with contextlib.suppress(OSError):
            KUBELET_FIXED_DIR.rmdir()
    path.unlink()


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="tests/e2e/cluster/up|down", description=(
        "Start (up) or stop (down) the loopback Kubernetes cluster of the end-to-end suite."))
    p.add_argument("action", choices=("up", "down"))
    p.add_argument("--dir", type=Path, default=Path("/tmp/gputopo-e2e"),
                   help="working directory: logs, certificates, kubeconfig (default %(default)s)")
    p.add_argument("--node", action="append", default=[], metavar="NAME=PRESET",
                   help="a kubelet with the device plugin on this preset (repeatable; "
                        "default: gpu-a=dgx1-v100 gpu-b=pcie-8gpu-sys)")
    p.add_argument("--no-extender", action="store_true", help="kube-scheduler without it")
    a = p.parse_args(argv)
    if a.action == "down":
        _down_from_state(a.dir)
        return 0
    raw = a.node or ["gpu-a=dgx1-v100", "gpu-b=pcie-8gpu-sys"]
    nodes = []
    for item in raw:
        name, _, preset = item.partition("=")
        if not name or not preset:
            p.error(f"--node {item!r}: expected NAME=PRESET")
        nodes.append(NodeSpec(name=name, preset=preset))
    if (a.dir / "state.json").exists():
        p.error(f"{a.dir} holds a running cluster; run 'down --dir {a.dir}' first")
    try:
        tools = find_tools()
    except E2EUnavailable as e:
        print(f"up: {e}", file=sys.stderr)
        return 3
    cluster = LocalCluster(spec=ClusterSpec(nodes=tuple(nodes), extender=not a.no_extender),
                           workdir=a.dir, tools=tools).up()
    state = _save_state(cluster)
    print(f"up: cluster running; state in {state}\n"
          f"  export KUBECONFIG={cluster.kubeconfig}\n"
          f"  kubectl: {tools['kubectl']}\n"
          + (f"  extender: {cluster.extender_url}/\n" if a.no_extender is False else "")
          + f"  logs: {cluster.logs}\n  stop with: tests/e2e/cluster/down --dir {a.dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
