"""The event loop: jobs arrive, kube-scheduler places their pods, binds land, jobs end.

One :class:`Simulation` replays one workload on one cluster under one policy:

* **Time** jumps from event to event (arrivals, completions). At each instant the
  completions are applied, then the arrivals queued, then a scheduling pass runs.
* **Queue.** Pending pods are tried in submission order; a pod that does not fit waits
  (kube-scheduler's unschedulable queue) while later, smaller pods go ahead, and all of
  them are tried again at the next event. A pod no node can take by count is not sent
  through the filters (kube-scheduler would find no feasible node either).
* **Scheduling cycle** (one pod): feasible nodes by count (``NodeResourcesFit``), then,
  with the extender, its filter; with more than one node left, the plugins' scores plus
  the extender's ``score * weight * 10``; the best total wins, ties at random
  (:mod:`simulator.kube`). The pod is *assumed* on the node (the scheduler's count) and
  its bind goes in flight.
* **Asynchronous binding.** A bind lands after 0..``bind_lag`` further scheduling
  cycles (seeded): the next pods are filtered and scored while it is in flight, on an
  extender state that does not show it yet. When it lands the extender's bind chooses
  the set again on fresh state and may fail; a failed bind is counted, the pod forgotten
  by the scheduler and tried again in the same instant (up to ``_RETRY_ROUNDS`` rounds,
  then at the next event). At the end of a pass every bind in flight lands.
* **Gangs.** A job larger than the largest node becomes ``ceil(n / G)`` pods of ``G``
  GPUs (``G`` = the largest node's GPUs), tried only when that many nodes are wholly
  free and placed all or nothing (coscheduling's Permit: a failed member releases the
  others).
* **Delay scheduling** (``topology``): the extender's filter may pass a pod over while
  it waits for its best set (``extender.patience``). kube-scheduler tries such a pod
  again at the next event, or ``MAX_UNSCHEDULABLE_S`` (5 minutes) after the pass at the
  latest: a pass runs then, so a pod whose patience ran out is placed without waiting
  for an arrival or a completion.
* **Devices** are picked when the pod is bound: at random (count, binpack), by NVIDIA's
  best-effort policy (local), or by the device plugin honouring the extender's set.
* A job that no node could ever take is counted as unrunnable and never queued; the run
  ends when no event is left, so nothing can hang.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from simulator.cluster import Cluster
from simulator.comm import CommModel
from simulator.decisions import (
    EXTENDER_SCORE_SCALE,
    EXTENDER_WEIGHT,
    ExtenderModel,
    NodePlugin,
    gpu_request,
)
from simulator.kube import (
    DEFAULT_MEMORY,
    DEFAULT_MILLI_CPU,
    MAX_UNSCHEDULABLE_S,
    NodeCapacity,
    balanced_allocation,
    capacity_of,
    least_allocated,
    most_allocated,
    num_feasible_nodes_to_find,
)
from simulator.policies import Policy
from simulator.workload import Job, Workload
from topology.allocate import Allocation, allocator_for
from topology.besteffort import best_effort, pair_score
from topology.gpuids import indices_of, mask_of
from topology.links import Link, bandwidth_gbps
from topology.model import Topology

__all__ = ["JobRecord", "Placement", "Run", "Settings", "Simulation", "simulate"]

#: Rounds of "land the binds, retry the failed ones" per instant before waiting.
_RETRY_ROUNDS: Final = 8
#: Above this many partitions NVIDIA's best-effort search is replaced by its greedy
#: equivalent (only 16-GPU nodes get there: 2,027,025 pairings of 16).
_BEST_EFFORT_PARTITIONS: Final = 300_000
_EXTENDER_FACTOR: Final = EXTENDER_WEIGHT * EXTENDER_SCORE_SCALE


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    seed: int = 0
    #: A bind lands bind_lag_min..bind_lag scheduling cycles after its pod was assumed
    #: (uniformly, seeded).
    bind_lag: int = 3
    bind_lag_min: int = 0
    comm: CommModel = field(default_factory=CommModel)
    #: CPU cores and memory each pod requests per GPU (0: none, the non-zero defaults).
    cpu_per_gpu: float = 0.0
    memory_gib_per_gpu: float = 0.0
    #: ``gputopo.io/min-link`` on multi-GPU pods (None: unset), per pod size where
    #: ``min_link_by_size`` names one, and ``gputopo.io/link-policy`` with it.
    min_link: str | None = None
    min_link_by_size: tuple[tuple[int, str], ...] = ()
    link_policy: str | None = None
    #: The extender's ``--best-set-patience`` in seconds (None: its default;
    #: ``math.inf``: no limit), for ``topology`` policies.
    best_set_patience_s: float | None = None

    def link_for(self, size: int) -> str | None:
        """The min-link a pod of ``size`` GPUs carries (none for one GPU)."""
        if size < 2:
            return None
        return dict(self.min_link_by_size).get(size, self.min_link)


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where one pod ran and how good its set was."""

    node: str
    kind: str
    devices: tuple[int, ...]
    #: Weakest link of the best ring through the set, and the best an empty node of
    #: that kind offers for that many GPUs (None for one GPU).
    ring: Link | None
    best: Link | None
    #: Ring bandwidth over the best ring's (1.0 for one GPU).
    ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRecord:
    job_id: str
    num_gpus: int
    submit_s: float
    start_s: float
    end_s: float
    placements: tuple[Placement, ...]
    #: Whether every pod got a best set (None for 1-GPU jobs).
    best_set: bool | None
    #: The lowest ratio over the job's pods (None for 1-GPU jobs).
    ring_ratio: float | None
    #: Whether, in each pod's scheduling cycle, some node that fit by count still had a
    #: best set among its unallocated devices (None for 1-GPU jobs): a diagnostic that
    #: tells a policy's misses from moments when no best set was on offer anywhere.
    best_offered: bool | None
    comm_share: float
    slowdown: float

    @property
    def wait_s(self) -> float:
        return self.start_s - self.submit_s

    @property
    def jct_s(self) -> float:
        return self.end_s - self.submit_s


@dataclass(frozen=True, slots=True, kw_only=True)
class Run:
    """Everything one policy's run produced."""

    policy: str
    records: tuple[JobRecord, ...]
    #: (job id, why) for jobs no node could ever take, and for jobs still waiting
    #: when no event was left.
    unrunnable: tuple[tuple[str, str], ...]
    never_ran: tuple[tuple[str, str], ...]
    failed_binds: int
    #: Jobs sent back to the queue because a bind of theirs failed.
    rebinds: int
    #: Pods whose device-plugin set differed from the extender's (topology only).
    plugin_overrides: int
    #: Pods the extender's filter passed over at least once, waiting for their best set.
    passed_over: int
    #: The extender's best-set patience in the run, seconds (None: no extender).
    best_set_patience_s: float | None
    #: (time, GPUs held by jobs) at every instant it changed.
    timeline: tuple[tuple[float, int], ...]
    #: GPUs the jobs could use (the cluster's, less those held outside the run).
    capacity: int
    cycles: int
    wall_s: float


class _Pod:
    __slots__ = ("cancelled", "devices", "job", "key", "node", "offered", "size", "uid")

    def __init__(self, job: _Job, uid: str, size: int, key: str) -> None:
        self.job = job
        self.uid = uid
        #: The pod as kube-scheduler retries it (one Pod object, whatever the attempt):
        #: what the extender keeps delay scheduling's clock by.
        self.key = key
        self.size = size
        self.node = -1
        self.devices: tuple[int, ...] = ()
        self.cancelled = False
        self.offered = True


class _Job:
    __slots__ = ("attempt", "failed", "index", "job", "key", "landed", "pods", "start")

    def __init__(self, index: int, job: Job, key: tuple[str, int]) -> None:
        self.index = index
        self.job = job
        self.key = key
        self.pods: list[_Pod] = []
        self.landed = 0
        self.failed = False
        self.attempt = 0
        self.start = 0.0


class Simulation:
    """One policy on one cluster; :meth:`run` replays the workload once."""

    def __init__(
        self, cluster: Cluster, workload: Workload, policy: Policy, settings: Settings,
        *, progress: Callable[[int], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.workload = workload
        self.policy = policy
        self.settings = settings
        self.progress = progress
        nodes = cluster.nodes
        self.n = len(nodes)
        self.names = [n.name for n in nodes]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.kinds = [n.kind for n in nodes]
        self.topo: list[Topology] = [n.topology for n in nodes]
        self.caps: list[NodeCapacity] = []
        cap_cache: dict[str, NodeCapacity] = {}
        for t in self.topo:
            c = cap_cache.get(t.fingerprint + str(t.gpus[0].cpu_affinity))
            if c is None:
                c = cap_cache[t.fingerprint + str(t.gpus[0].cpu_affinity)] = capacity_of(t)
            self.caps.append(c)
        self.size = [t.size for t in self.topo]
        self.fixed = [len(n.used) for n in nodes]
        self.G = max(self.size)
        #: The scheduler's count: GPUs free by count (assumed pods included).
        self.free = [self.size[i] - self.fixed[i] for i in range(self.n)]
        #: The kubelet's view: devices not allocated.
        self.free_mask = [((1 << self.size[i]) - 1) & ~mask_of(n.used)
                          for i, n in enumerate(nodes)]
        self.hist = [0] * (self.G + 1)
        for f in self.free:
            self.hist[f] += 1
        gib = 1024**3
        self.pod_cpu = [0] * (self.G + 1)
        self.pod_mem = [0] * (self.G + 1)
        for k in range(1, self.G + 1):
            self.pod_cpu[k] = int(settings.cpu_per_gpu * 1000 * k)
            self.pod_mem[k] = int(settings.memory_gib_per_gpu * gib * k)
        self.cpu_nz = [0] * self.n
        self.mem_nz = [0] * self.n
        self.cpu_req = [0] * self.n
        self.mem_req = [0] * self.n
        self._scores: list[dict[int, int]] = [{} for _ in range(self.n)]
        self.to_find = num_feasible_nodes_to_find(policy.nodes_to_score_percent, self.n)
        self.next_start = 0
        self.ext = ExtenderModel(
            [(n.name, n.topology, n.used) for n in nodes],
            patience_s=settings.best_set_patience_s) if policy.extender else None
        self.plugins = [NodePlugin(n.name, n.topology) for n in nodes] \
            if policy.devices == "plugin" else []
        seed = settings.seed
        self.rng_ties = random.Random(f"ties:{seed}")
        self.rng_lag = random.Random(f"lag:{seed}")
        self.rng_dev = random.Random(f"devices:{seed}")
        self.requests = {
            k: gpu_request(k, settings.link_for(k),
                           settings.link_policy if settings.link_for(k) else None)
            for k in range(1, self.G + 1)}
        self.cycle = 0
        self.binds: list[tuple[int, int, _Pod]] = []
        self.bind_seq = 0
        self.queues: dict[tuple[str, int], deque[_Job]] = {}
        self.retry: list[_Job] = []
        self.completions: list[tuple[float, int, _Job]] = []
        self.now = 0.0
        self.records: list[JobRecord] = []
        self.unrunnable: list[tuple[str, str]] = []
        self.failed_binds = 0
        self.rebinds = 0
        self.overrides = 0
        self.held = 0
        self.timeline: list[tuple[float, int]] = []
        #: Pods passed over for their best set (ever, and in the current pass).
        self.passed_over: set[str] = set()
        self.waiting = False
        self._ring_memo: dict[tuple[str, int, int], Link | None] = {}
        self._best_memo: dict[tuple[str, int], Link | None] = {}
        self._offer_memo: dict[tuple[str, int, int], bool] = {}
        self._be_memo: dict[tuple[str, int, int], tuple[int, ...]] = {}
        self._runnable: dict[tuple[str, int], str] = {}
        self._comm = {j.job_id: settings.comm.share(seed, j.job_id, j.num_gpus)
                      for j in workload.jobs}

    # -- the scheduler's count -----------------------------------------------------------
    def _take(self, i: int, k: int, sign: int) -> None:
        """Assume (sign 1) or forget (sign -1) a pod of ``k`` GPUs on node ``i``."""
        f = self.free[i]
        self.hist[f] -= 1
        f -= sign * k
        self.free[i] = f
        self.hist[f] += 1
        self.cpu_nz[i] += sign * max(self.pod_cpu[k], DEFAULT_MILLI_CPU)
        self.mem_nz[i] += sign * max(self.pod_mem[k], DEFAULT_MEMORY)
        self.cpu_req[i] += sign * self.pod_cpu[k]
        self.mem_req[i] += sign * self.pod_mem[k]
        self.held += sign * k
        self._scores[i] = {}

    def _fits(self, key: tuple[str, int]) -> bool:
        kind, k = key
        if kind == "gang":
            return self.hist[self.G] >= k
        hist = self.hist
        return any(hist[f] for f in range(k, self.G + 1))

    def _feasible(self, k: int) -> list[int]:
        free = self.free
        if self.to_find >= self.n:
            return [i for i in range(self.n) if free[i] >= k]
        out: list[int] = []
        start, n, need = self.next_start, self.n, self.to_find
        checked = 0
        for off in range(n):
            i = (start + off) % n
            checked += 1
            if free[i] >= k:
                out.append(i)
                if len(out) == need:
                    break
        self.next_start = (start + checked) % n
        return out

    def _plugin_score(self, i: int, k: int) -> int:
        cached = self._scores[i].get(k)
        if cached is not None:
            return cached
        cap = self.caps[i]
        if self.policy.scoring == "most-allocated-gpu":
            fit = most_allocated(self.size[i] - self.free[i] + k, cap)
        else:
            fit = least_allocated(self.cpu_nz[i] + max(self.pod_cpu[k], DEFAULT_MILLI_CPU),
                                  self.mem_nz[i] + max(self.pod_mem[k], DEFAULT_MEMORY), cap)
        score = fit + balanced_allocation(self.cpu_req[i] + self.pod_cpu[k],
                                          self.mem_req[i] + self.pod_mem[k], cap)
        self._scores[i][k] = score
        return score

    def _select(self, candidates: list[int], totals: list[int]) -> int:
        best = max(totals)
        ties = [c for c, s in zip(candidates, totals, strict=True) if s == best]
        return ties[0] if len(ties) == 1 else ties[self.rng_ties.randrange(len(ties))]

    # -- one scheduling cycle ------------------------------------------------------------
    def _schedule_pod(self, pod: _Pod) -> bool:
        self._land_due()
        self.cycle += 1
        k = pod.size
        candidates = self._feasible(k)
        if not candidates:
            return False
        if 1 < k < self.G:
            pod.offered = self._offered(candidates, k)
        ext = self.ext
        if ext is not None:
            request = self.requests[k]
            answer = ext.filter(request, [self.names[i] for i in candidates], pod=pod.key,
                                now=self.now)
            passed = answer.passed
            if not passed:
                if answer.passed_over:
                    self.waiting = True
                    self.passed_over.add(pod.key)
                return False
            if len(passed) == 1:
                node = self.index[passed[0]]
            else:
                candidates = [self.index[name] for name in passed]
                ext_scores = ext.prioritize(request, passed)
                score = self._plugin_score
                totals = [score(i, k) + s * _EXTENDER_FACTOR
                          for i, s in zip(candidates, ext_scores, strict=True)]
                node = self._select(candidates, totals)
        elif len(candidates) == 1:
            node = candidates[0]
        else:
            score = self._plugin_score
            node = self._select(candidates, [score(i, k) for i in candidates])
        pod.node = node
        self._take(node, k, 1)
        lo, hi = self.settings.bind_lag_min, self.settings.bind_lag
        lag = self.rng_lag.randint(lo, hi) if hi > lo else hi
        self.bind_seq += 1
        heapq.heappush(self.binds, (self.cycle + lag, self.bind_seq, pod))
        return True

    def _offered(self, candidates: list[int], k: int) -> bool:
        """Whether one of ``candidates`` has a best ``k``-set among its free devices."""
        memo = self._offer_memo
        for i in candidates:
            t = self.topo[i]
            key = (t.fingerprint, self.free_mask[i], k)
            hit = memo.get(key)
            if hit is None:
                r = allocator_for(t).best(k, self.free_mask[i])
                best = self._best(t, k)
                hit = memo[key] = (isinstance(r, Allocation) and best is not None
                                   and r.ring_link is not None and r.ring_link >= best)
            if hit:
                return True
        return False

    # -- binds ---------------------------------------------------------------------------
    def _land_due(self) -> None:
        binds = self.binds
        while binds and binds[0][0] <= self.cycle:
            self._land(heapq.heappop(binds)[2])

    def _land_all(self) -> None:
        while self.binds:
            self._land(heapq.heappop(self.binds)[2])

    def _land(self, pod: _Pod) -> None:
        job = pod.job
        node = pod.node
        if pod.cancelled or job.failed:
            self._take(node, pod.size, -1)
            return
        k = pod.size
        if self.ext is not None:
            chosen = self.ext.bind(pod.uid, self.names[node], self.requests[k], pod=pod.key,
                                   now=self.now)
            if isinstance(chosen, str):
                self.failed_binds += 1
                self._take(node, k, -1)
                pod.node = -1
                self._fail(job)
                return
            plugin = self.plugins[node]
            plugin.bound(pod.uid, chosen)
            devices = plugin.admit(pod.uid, k, self.free_mask[node])
            if devices != chosen:
                self.overrides += 1
                self.ext.record_allocated(pod.uid, self.names[node], devices)
        elif self.policy.devices == "best-effort":
            devices = self._best_effort(node, k)
        else:
            devices = tuple(sorted(self.rng_dev.sample(indices_of(self.free_mask[node]), k)))
        self.free_mask[node] &= ~mask_of(devices)
        pod.devices = devices
        job.landed += 1
        if job.landed == len(job.pods):
            self._start(job)

    def _fail(self, job: _Job) -> None:
        """A member's bind failed: release the others (all or nothing), queue it again."""
        job.failed = True
        for p in job.pods:
            if p.node < 0:
                continue
            if p.devices:
                self._release_pod(p)
            else:
                p.cancelled = True  # its bind is still in flight: forgotten when it lands
        self.rebinds += 1
        self.retry.append(job)

    def _release_pod(self, pod: _Pod) -> None:
        node = pod.node
        if self.ext is not None:
            self.ext.release(pod.uid)
            self.plugins[node].release(pod.uid)
        self.free_mask[node] |= mask_of(pod.devices)
        self._take(node, pod.size, -1)
        pod.devices = ()

    def _best_effort(self, node: int, k: int) -> tuple[int, ...]:
        t = self.topo[node]
        free = self.free_mask[node]
        key = (t.fingerprint, free, k)
        hit = self._be_memo.get(key)
        if hit is None:
            avail = indices_of(free)
            if _partitions(len(avail), k) <= _BEST_EFFORT_PARTITIONS:
                hit = best_effort(t, k, avail)
            else:
                hit = _greedy_best_effort(t, k, avail)
            self._be_memo[key] = hit
        return hit

    # -- jobs ----------------------------------------------------------------------------
    def _ring(self, t: Topology, devices: tuple[int, ...]) -> Link | None:
        m = mask_of(devices)
        key = (t.fingerprint, m, len(devices))
        if key not in self._ring_memo:
            r = allocator_for(t).best(len(devices), m)
            self._ring_memo[key] = r.ring_link if isinstance(r, Allocation) else None
        return self._ring_memo[key]

    def _best(self, t: Topology, k: int) -> Link | None:
        key = (t.fingerprint, k)
        if key not in self._best_memo:
            self._best_memo[key] = allocator_for(t).best_ring_possible(k)
        return self._best_memo[key]

    def _start(self, job: _Job) -> None:
        placements = []
        for p in job.pods:
            t = self.topo[p.node]
            ring = self._ring(t, p.devices) if p.size > 1 else None
            best = self._best(t, p.size) if p.size > 1 else None
            if ring is None or best is None:
                ratio = 1.0
            else:
                ratio = (bandwidth_gbps(ring, t.gb_per_nvlink)
                         / bandwidth_gbps(best, t.gb_per_nvlink))
            placements.append(Placement(node=self.names[p.node], kind=self.kinds[p.node],
                                        devices=p.devices, ring=ring, best=best,
                                        ratio=ratio))
        multi = job.job.num_gpus > 1
        ratio = min(pl.ratio for pl in placements)
        share = self._comm[job.job.job_id]
        slowdown = self.settings.comm.slowdown(share, ratio)
        job.start = self.now
        end = self.now + job.job.duration_s * slowdown
        best_set = all(pl.ring is None or pl.best is None or pl.ring >= pl.best
                       for pl in placements) if multi else None
        self.records.append(JobRecord(
            job_id=job.job.job_id, num_gpus=job.job.num_gpus, submit_s=job.job.submit_s,
            start_s=self.now, end_s=end, placements=tuple(placements), best_set=best_set,
            ring_ratio=ratio if multi else None,
            best_offered=all(p.offered for p in job.pods) if multi else None,
            comm_share=share, slowdown=slowdown,
        ))
        heapq.heappush(self.completions, (end, job.index, job))

    def _finish(self, job: _Job) -> None:
        for p in job.pods:
            self._release_pod(p)

    def _why_never(self, key: tuple[str, int]) -> str:
        """Why no node could ever take pods of this key ("" when some could)."""
        hit = self._runnable.get(key)
        if hit is not None:
            return hit
        kind, n = key
        why = ""
        if kind == "gang":
            whole = sum(1 for i in range(self.n) if self.size[i] == self.G and not self.fixed[i])
            if whole < n:
                why = (f"needs {n} wholly free {self.G}-GPU nodes; the cluster has {whole}")
        else:
            fits = [i for i in range(self.n) if self.size[i] - self.fixed[i] >= n]
            if not fits:
                why = f"no node has {n} GPUs to give"
            elif self.ext is not None:
                request = self.requests[n]
                kinds = {self.topo[i].fingerprint: self.topo[i] for i in fits}
                if not any(ExtenderModel.can_ever_place(t, request) for t in kinds.values()):
                    why = (f"no node type can give {n} GPUs meeting min-link "
                           f"{self.settings.link_for(n)} ({self.settings.link_policy})")
        if kind == "gang" and not why and self.ext is not None:
            request = self.requests[self.G]
            if not any(ExtenderModel.can_ever_place(self.topo[i], request)
                       for i in range(self.n) if self.size[i] == self.G):
                why = f"no {self.G}-GPU node meets min-link {self.settings.link_for(self.G)}"
        self._runnable[key] = why
        return why

    def _arrive(self, index: int, job: Job) -> None:
        k = job.num_gpus
        key = ("pod", k) if k <= self.G else ("gang", math.ceil(k / self.G))
        if k > self.cluster.gpus:
            self.unrunnable.append((job.job_id, f"{k} GPUs: more than the whole cluster's "
                                                f"{self.cluster.gpus}"))
            return
        why = self._why_never(key)
        if why:
            self.unrunnable.append((job.job_id, why))
            return
        self.queues.setdefault(key, deque()).append(_Job(index, job, key))

    def _new_pods(self, job: _Job) -> None:
        job.attempt += 1
        job.landed = 0
        job.failed = False
        kind, n = job.key
        size = job.job.num_gpus if kind == "pod" else self.G
        count = 1 if kind == "pod" else n
        suffix = "" if job.attempt == 1 else f"-r{job.attempt - 1}"
        job.pods = [_Pod(job, f"{job.job.job_id}-{m}{suffix}", size, f"{job.job.job_id}-{m}")
                    for m in range(count)]

    def _schedule_job(self, job: _Job) -> bool:
        self._new_pods(job)
        for m, pod in enumerate(job.pods):
            placed = self._schedule_pod(pod)
            if job.failed:
                # An earlier member's bind landed in this cycle and failed: the job is
                # already queued for a retry; this member's bind is forgotten.
                pod.cancelled = placed
                return True
            if not placed:
                # A gang member found no node: Permit rejects the group.
                for p in job.pods[:m]:
                    if p.devices:
                        self._release_pod(p)
                    else:
                        p.cancelled = True
                return False
        return True

    def _round(self) -> None:
        heads = [(q[0].index, key) for key, q in self.queues.items() if q]
        heapq.heapify(heads)
        while heads:
            _, key = heapq.heappop(heads)
            if not self._fits(key):
                continue
            q = self.queues[key]
            job = q.popleft()
            if not self._schedule_job(job):
                q.appendleft(job)
                continue
            if q:
                heapq.heappush(heads, (q[0].index, key))

    def _pass(self) -> None:
        for _ in range(_RETRY_ROUNDS):
            self._round()
            self._land_all()
            if not self.retry:
                return
            self._requeue()
        self._land_all()
        self._requeue()

    def _requeue(self) -> None:
        for job in sorted(self.retry, key=lambda j: -j.index):
            self.queues[job.key].appendleft(job)
        self.retry.clear()

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Run:
        started = time.perf_counter()
        jobs = self.workload.jobs
        n = len(jobs)
        i = 0
        done = 0
        completions = self.completions
        wake = math.inf  # a pass for pods passed over (kube-scheduler's 5-minute flush)
        bounded = self.ext is not None and self.ext.patience_bounded
        while i < n or completions or (wake < math.inf and bounded):
            t = jobs[i].submit_s if i < n else math.inf
            if completions and completions[0][0] <= t:
                t = completions[0][0]
            t = min(t, wake)
            self.now = t
            while completions and completions[0][0] <= t:
                self._finish(heapq.heappop(completions)[2])
                done += 1
            unrunnable = len(self.unrunnable)
            while i < n and jobs[i].submit_s <= t:
                self._arrive(i, jobs[i])
                i += 1
            done += len(self.unrunnable) - unrunnable
            self.waiting = False
            self._pass()
            wake = t + MAX_UNSCHEDULABLE_S if self.waiting else math.inf
            if not self.timeline or self.timeline[-1][1] != self.held:
                self.timeline.append((t, self.held))
            if self.progress is not None and done:
                self.progress(done)
                done = 0
        never = tuple((j.job.job_id, f"still waiting for {j.job.num_gpus} GPUs when no "
                                     "event was left") for q in self.queues.values() for j in q)
        if self.progress is not None and never:
            self.progress(len(never))
        self.records.sort(key=lambda r: (r.submit_s, r.job_id))
        return Run(
            policy=self.policy.name, records=tuple(self.records),
            unrunnable=tuple(self.unrunnable), never_ran=never,
            failed_binds=self.failed_binds, rebinds=self.rebinds,
            plugin_overrides=self.overrides, passed_over=len(self.passed_over),
            best_set_patience_s=None if self.ext is None else self.ext.patience.default_s,
            timeline=tuple(self.timeline),
            capacity=sum(self.size) - sum(self.fixed), cycles=self.cycle,
            wall_s=time.perf_counter() - started,
        )


def _partitions(m: int, k: int) -> int:
    """Partitions of ``m`` GPUs (padded to a multiple of ``k``) into sets of ``k``."""
    if k <= 0:
        return 1
    padded = m + (-m) % k
    groups = padded // k
    count: int = math.factorial(padded) // (math.factorial(k) ** groups * math.factorial(groups))
    return count


def _greedy_best_effort(t: Topology, k: int, avail: Sequence[int]) -> tuple[int, ...]:
    """Best-effort's pair scores, grown greedily (for the few too-large searches)."""
    if k <= 0 or len(avail) < k:
        return ()
    if k == 1:
        return (avail[0],)
    best_pair = max(((a, b) for n, a in enumerate(avail) for b in avail[n + 1:]),
                    key=lambda p: pair_score(t, p[0], p[1]))
    chosen = list(best_pair)
    while len(chosen) < k:
        rest = [g for g in avail if g not in chosen]
        chosen.append(max(rest, key=lambda g: sum(pair_score(t, g, c) for c in chosen)))
    return tuple(sorted(chosen))


def simulate(
    cluster: Cluster, workload: Workload, policy: Policy, settings: Settings,
    *, progress: Callable[[int], None] | None = None,
) -> Run:
    """Replay ``workload`` on ``cluster`` under ``policy``."""
    return Simulation(cluster, workload, policy, settings, progress=progress).run()
