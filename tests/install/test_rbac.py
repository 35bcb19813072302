"""Least privilege: every verb the manifests grant is one the code uses, and no other.

``USES`` is the one table: per ServiceAccount, API group, resource, verb (and the names
or namespace a rule is limited to), the module that makes the call and a piece of that
call as it reads in the module. The test fails on a verb granted that is not in the
table, on a row that is not granted, and on a row whose module no longer contains its
call (the code changed: update the row, or drop the verb). The end-to-end suite asks the
real API server the same (``kubectl auth can-i``) after installing the manifests.

Changing what a daemon calls: edit its row here and the rule in manifests/*-rbac.yaml
(and the chart's templates/*-rbac.yaml; the end-to-end suite compares the two renders).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.install.manifests import NAMESPACE, ROOT, Obj, installed

EXTENDER = "gputopo-extender"
PLUGIN = "gputopo-device-plugin"
SCHEDULER = "gputopo-scheduler"
CORE = ""
COORDINATION = "coordination.k8s.io"
GPUTOPO = "gputopo.io"
#: Calls made by upstream kube-scheduler, not by code in this repository.
UPSTREAM = "kube-scheduler (upstream)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Use:
    account: str
    group: str
    resource: str
    verb: str
    #: The module that makes the call, and a piece of the call as the module has it.
    module: str
    call: str
    #: resourceNames the rule is limited to (() = any name).
    names: tuple[str, ...] = ()
    #: The Role's namespace, or None for a ClusterRole.
    namespace: str | None = None

    @property
    def grant(self) -> tuple[str, str, str, str, tuple[str, ...], str | None]:
        return (self.account, self.group, self.resource, self.verb, self.names,
                self.namespace)

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        names = f" named {','.join(self.names)}" if self.names else ""
        group = self.group or "core"
        return f"{self.account}: {self.verb} {group}/{self.resource}{names}{where}"


def _lease(account: str, verb: str, module: str, call: str, *, named: bool) -> Use:
    return Use(account=account, group=COORDINATION, resource="leases", verb=verb,
               module=module, call=call, names=(account,) if named else (),
               namespace=NAMESPACE)


USES: tuple[Use, ...] = (
    # -- the extender ------------------------------------------------------------------
    # The bind is one POST of pods/binding that carries the assigned-gpus annotation (no
    # pods patch). Pods are read only when a Binding conflicts (a retry, or a recreated
    # pod) and when a bind names a pod this process did not see in filter.
    Use(account=EXTENDER, group=CORE, resource="pods", verb="get",
        module="extender/kube.py",
        call='"GET", f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}"'),
    Use(account=EXTENDER, group=CORE, resource="pods", verb="list",
        module="extender/kube.py", call='PODS_PATH: Final = "/api/v1/pods"'),
    Use(account=EXTENDER, group=CORE, resource="pods", verb="watch",
        module="extender/kube.py", call="self.api.watch(path"),
    Use(account=EXTENDER, group=CORE, resource="pods/binding", verb="create",
        module="extender/kube.py", call="/pods/{ref.name}/binding"),
    Use(account=EXTENDER, group=GPUTOPO, resource="gputopologies", verb="list",
        module="extender/kube.py", call='"gputopologies", GPUTOPOLOGY_PATH, {}'),
    Use(account=EXTENDER, group=GPUTOPO, resource="gputopologies", verb="watch",
        module="extender/kube.py", call='"gputopologies", GPUTOPOLOGY_PATH, {}'),
    _lease(EXTENDER, "create", "extender/leader.py", 'self._write("POST"', named=False),
    _lease(EXTENDER, "get", "extender/leader.py", 'await self.api.request("GET", self.path)',
           named=True),
    _lease(EXTENDER, "update", "extender/leader.py", 'self._write("PUT", self.path',
           named=True),
    # -- the device plugin -------------------------------------------------------------
    Use(account=PLUGIN, group=CORE, resource="pods", verb="list",
        module="plugin/kube.py", call="self.core.list_pod_for_all_namespaces("),
    Use(account=PLUGIN, group=CORE, resource="pods", verb="watch",
        module="plugin/kube.py", call="w.stream("),
    Use(account=PLUGIN, group=CORE, resource="pods", verb="patch",  # allocated-gpus
        module="plugin/reconcile.py", call="self._cluster.patch_pod_annotations("),
    Use(account=PLUGIN, group=CORE, resource="nodes", verb="get",  # uid (owner), labels
        module="plugin/kube.py", call="self.core.read_node("),
    Use(account=PLUGIN, group=CORE, resource="nodes", verb="patch",  # gputopo.io/* labels
        module="plugin/kube.py", call="self.core.patch_node("),
    Use(account=PLUGIN, group=GPUTOPO, resource="gputopologies", verb="get",
        module="plugin/kube.py", call="self.custom.get_cluster_custom_object("),
    Use(account=PLUGIN, group=GPUTOPO, resource="gputopologies", verb="create",
        module="plugin/kube.py", call="self.custom.create_cluster_custom_object("),
    Use(account=PLUGIN, group=GPUTOPO, resource="gputopologies", verb="update",
        module="plugin/kube.py", call="self.custom.replace_cluster_custom_object("),
    # -- the second scheduler: its Lease, as system:kube-scheduler grants for its own --
    _lease(SCHEDULER, "get", UPSTREAM, "", named=True),
    _lease(SCHEDULER, "update", UPSTREAM, "", named=True),
    _lease(SCHEDULER, "list", UPSTREAM, "", named=True),
    _lease(SCHEDULER, "watch", UPSTREAM, "", named=True),
)

#: Roles maintained by Kubernetes itself that our ServiceAccounts are bound to.
UPSTREAM_ROLES: frozenset[tuple[str, str, str, str | None]] = frozenset({
    (SCHEDULER, "ClusterRole", "system:kube-scheduler", None),
    (SCHEDULER, "ClusterRole", "system:volume-scheduler", None),
    (SCHEDULER, "Role", "extension-apiserver-authentication-reader", "kube-system"),
})

Grant = tuple[str, str, str, str, tuple[str, ...], str | None]


def _roles(objs: list[Obj]) -> dict[tuple[str, str, str | None], Obj]:
    return {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")): o
            for o in objs if o["kind"] in ("Role", "ClusterRole")}


def _bindings(objs: list[Obj]) -> list[tuple[str, str, str, str | None]]:
    """(ServiceAccount, role kind, role name, role namespace) for every binding."""
    out = []
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if ref["kind"] == "Role" else None
        for s in b["subjects"]:
            assert s["kind"] == "ServiceAccount" and s["namespace"] == NAMESPACE, s
            out.append((s["name"], ref["kind"], ref["name"], ns))
    return out


def granted(objs: list[Obj]) -> set[Grant]:
    """Every (account, group, resource, verb, names, namespace) our own roles grant."""
    roles = _roles(objs)
    out: set[Grant] = set()
    for account, kind, name, ns in _bindings(objs):
        role = roles.get((kind, name, ns))
        if role is None:
            continue  # an upstream role: checked against UPSTREAM_ROLES
        for rule in role["rules"]:
            names = tuple(sorted(rule.get("resourceNames") or ()))
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.add((account, group, resource, verb, names, ns))
    return out


def test_every_granted_verb_is_used_and_every_used_verb_granted() -> None:
    objs = installed()
    grants = granted(objs)
    table = {u.grant for u in USES}
    assert len(table) == len(USES), "a row is in USES twice"
    unused = sorted(grants - table)
    missing = sorted(table - grants)
    assert not unused, f"granted, but no code in USES makes the call: {unused}"
    assert not missing, f"in USES, but not granted by manifests/: {missing}"


def test_no_wildcards_and_no_escalation() -> None:
    for role in _roles(installed()).values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate"}, rule
            assert "secrets" not in rule["resources"], rule


def test_bindings_to_upstream_roles_are_exactly_the_documented_ones() -> None:
    objs = installed()
    ours = _roles(objs)
    upstream = {b for b in _bindings(objs) if (b[1], b[2], b[3]) not in ours}
    assert upstream == UPSTREAM_ROLES


def test_one_service_account_per_component() -> None:
    objs = installed()
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    assert accounts == {EXTENDER, PLUGIN, SCHEDULER}
    workloads = {o["metadata"]["name"]: o["spec"]["template"]["spec"]["serviceAccountName"]
                 for o in objs if o["kind"] in ("Deployment", "DaemonSet")}
    assert workloads == {EXTENDER: EXTENDER, PLUGIN: PLUGIN, SCHEDULER: SCHEDULER}


@pytest.mark.parametrize("use", [u for u in USES if u.module != UPSTREAM], ids=str)
def test_the_module_named_makes_the_call(use: Use) -> None:
    """A row whose call is gone from its module is stale: the code changed."""
    source = (ROOT / use.module).read_text()
    assert use.call in source, (
        f"{use}: {use.module} no longer contains {use.call!r}; update USES and the rule")


def test_leader_election_leases_are_the_ones_the_daemons_use() -> None:
    from extender.main import parse_args

    objs = installed()
    (ext,) = [o for o in objs if o["kind"] == "Deployment"
              and o["metadata"]["name"] == EXTENDER]
    args = ext["spec"]["template"]["spec"]["containers"][0]["args"]
    assert parse_args(args).lease_name == EXTENDER
    import yaml

    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    assert cfg["leaderElection"]["resourceName"] == SCHEDULER
    assert cfg["leaderElection"]["resourceNamespace"] == NAMESPACE
