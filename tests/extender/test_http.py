"""The real server on a loopback port: recorded scheduler bodies, endpoints, bad input."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from extender.config import ExtenderConfig
from extender.filesource import file_cluster
from extender.main import ssl_context

from .helpers import RECORDED, gpu_pod, memory_cluster, serving

PREFIX = "/scheduler"  # the recorded urlPrefix was http://127.0.0.1:18888/scheduler
needs_recorded = pytest.mark.skipif(
    not RECORDED.is_dir(),
    reason=f"recorded kube-scheduler bodies not found at {RECORDED} (../shared is absent)",
)


def recorded(name: str) -> bytes:
    return (RECORDED / name).read_bytes()


async def post(s: aiohttp.ClientSession, url: str, body: bytes | str) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    async with s.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
        return r.status, json.loads(await r.read())


@pytest.fixture
def cluster_file(tmp_path: Path, three_nodes: list[dict[str, Any]]) -> Path:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"nodes": three_nodes}))
    return path


@needs_recorded
@pytest.mark.parametrize("mode", ["node-cache-capable", "full-nodes"])
async def test_replay_recorded_bodies(mode: str, cluster_file: Path) -> None:
    cfg = ExtenderConfig(host="127.0.0.1", port=0, path_prefix=PREFIX)
    async with serving(file_cluster(cluster_file), cfg) as url, aiohttp.ClientSession() as s:
        # filter: the same keys as the accepted answer, in the form the request came in
        request = json.loads(recorded(f"{mode}.filter.request.json"))
        accepted = json.loads(recorded(f"{mode}.filter.accepted-response.json"))
        status, answer = await post(s, f"{url}{PREFIX}/filter",
                                    recorded(f"{mode}.filter.request.json"))
        assert status == 200
        assert set(accepted) <= set(answer)
        assert answer["Error"] == ""
        if request["Nodes"] is not None:
            # nodeCacheCapable: false -> Nodes must come back (else every node is dropped)
            items = answer["Nodes"]["items"]
            assert items and all(n in request["Nodes"]["items"] for n in items)
            assert answer["Nodes"]["metadata"] == request["Nodes"]["metadata"]
            passed = [n["metadata"]["name"] for n in items]
        else:
            assert set(answer["NodeNames"]) <= set(request["NodeNames"])
            passed = answer["NodeNames"]
        # gpu-node-2 has 3 free GPUs: it fails with the reason; the others pass
        assert passed == ["gpu-node-1", "gpu-node-3"]
        assert answer["FailedNodes"] == {"gpu-node-2": "3 free GPUs (5,6,7): 4 requested"}
        # prioritize: a bare array of {"Host", "Score"} with integers 0..10
        status, scores = await post(s, f"{url}{PREFIX}/prioritize",
                                    recorded(f"{mode}.prioritize.request.json"))
        accepted = json.loads(recorded(f"{mode}.prioritize.accepted-response.json"))
        assert status == 200 and isinstance(scores, list)
        assert all(set(h) == set(accepted[0]) for h in scores)
        # Hosts at the lowest score are left out (they would add nothing): a subset of
        # what the scheduler sent, in its order.
        hosts = [h["Host"] for h in scores]
        assert hosts == [h["Host"] for h in accepted if h["Host"] in hosts]
        assert all(type(h["Score"]) is int and 0 < h["Score"] <= 10 for h in scores)
        assert max(scores, key=lambda h: h["Score"])["Host"] == "gpu-node-3"
        # bind: to gpu-node-3, as the scheduler did
        status, result = await post(s, f"{url}{PREFIX}/bind",
                                    recorded(f"{mode}.bind.request.json"))
        assert (status, result) == (200, json.loads(
            recorded(f"{mode}.bind.accepted-response.json")))
        async with s.get(f"{url}/topology/gpu-node-3") as r:
            view = await r.json()
        assert len(view["free"]) == 4 and len(view["used"]) == 4
        # the scheduler's retry of the same bind succeeds
        status, result = await post(s, f"{url}{PREFIX}/bind",
                                    recorded(f"{mode}.bind.request.json"))
        assert result == {"Error": ""}


async def test_endpoints(three_nodes: list[dict[str, Any]]) -> None:
    cluster = memory_cluster(three_nodes, [gpu_pod("held", gpus=2, node="gpu-node-3", annotations={
        "gputopo.io/allocated-gpus": json.dumps(
            {"main": ["GPU-00000000-0000-0000-0000-000000000000",
                      "GPU-00000000-0000-0000-0000-000000000001"]})})])
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        async with s.get(f"{url}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{url}/readyz") as r:
            body = await r.json()
            assert r.status == 200 and body["ready"] and body["nodes"] == 3
        async with s.get(f"{url}/topology") as r:
            data = await r.json()
        assert [n["name"] for n in data["nodes"]] == ["gpu-node-1", "gpu-node-2", "gpu-node-3"]
        node3 = data["nodes"][2]
        assert node3["used"] == {"0": "default/held", "1": "default/held"}
        assert node3["free"] == [2, 3, 4, 5, 6, 7]
        assert node3["preset"] == "hgx-h100" and node3["gpu_count"] == 8
        assert [g["pod"] for g in node3["gpus"]][:3] == ["default/held", "default/held", None]
        assert node3["gpus"][0]["id"] == "GPU-00000000-0000-0000-0000-000000000000"
        assert data["summary"]["pods"] == 3  # the held pod + the file's "used" on two nodes
        assert node3["pods"][0]["source"] == "allocated"
        assert data["topologies"][node3["fingerprint"]]["schema"] == "gputopo.io/topology/v1"
        assert len(data["topologies"]) == 3
        async with s.get(f"{url}/topology/nope") as r:
            assert r.status == 404 and "nope" in (await r.json())["Error"]
        await post(s, f"{url}/filter", json.dumps({"Pod": gpu_pod(), "NodeNames": ["gpu-node-1"]}))
        async with s.get(f"{url}/metrics") as r:
            text = await r.text()
        assert 'gputopo_extender_requests_total{code="200",verb="filter"} 1.0' in text
        assert 'gputopo_extender_node_decisions_total{result="passed"} 1.0' in text
        assert "gputopo_extender_request_duration_seconds_bucket" in text
        assert "gputopo_extender_bind_conflicts_total 0.0" in text
        assert "gputopo_extender_free_gpus" in text


async def test_readyz_is_503_until_synced() -> None:
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        cluster.state.synced = False
        async with s.get(f"{url}/readyz") as r:
            assert r.status == 503 and "not loaded" in (await r.json())["reason"]


async def test_pod_without_gpus_passes_everywhere_with_equal_scores() -> None:
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100", "used": list(range(8))}])
    body = json.dumps({"Pod": gpu_pod(gpus=0), "NodeNames": ["a", "unknown"]})
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        _, answer = await post(s, f"{url}/filter", body)
        assert answer["NodeNames"] == ["a", "unknown"] and answer["FailedNodes"] == {}
        _, scores = await post(s, f"{url}/prioritize", body)
        assert scores == []  # every node the same: nothing to add anywhere


async def test_bad_annotation_is_the_filter_error_and_the_server_stays_up() -> None:
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    pod = gpu_pod(annotations={"gputopo.io/min-link": "quantum"})
    body = json.dumps({"Pod": pod, "NodeNames": ["a"]})
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        status, answer = await post(s, f"{url}/filter", body)
        assert status == 200
        assert "gputopo.io/min-link" in answer["Error"] and "'quantum'" in answer["Error"]
        assert "nvlink" in answer["Error"]
        status, scores = await post(s, f"{url}/prioritize", body)
        assert status == 200 and scores == []  # nothing added anywhere
        status, answer = await post(s, f"{url}/filter",
                                    json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]}))
        assert answer["NodeNames"] == ["a"]


BAD_BODIES = [
    ("filter", b"", "empty request body"),
    ("filter", b"{", "not JSON"),
    ("filter", b"\xff\xfe\x00", "not"),
    ("filter", b"[]", "ExtenderArgs: expected a JSON object, got a list"),
    ("filter", b'{"Nodes": null, "NodeNames": ["a"]}', "missing Pod"),
    ("filter", b'{"Pod": [], "NodeNames": ["a"]}', "ExtenderArgs.Pod: expected a JSON object"),
    ("filter", b'{"Pod": {"spec": 3}, "NodeNames": ["a"]}', "ExtenderArgs.Pod.spec"),
    ("filter", b'{"Pod": {}, "NodeNames": "a"}', "NodeNames: expected a list, got a string"),
    ("filter", b'{"Pod": {}, "NodeNames": ["a", 1]}', "NodeNames[1]: expected a string"),
    ("filter", b'{"Pod": {}}', "needs Nodes (a NodeList) or NodeNames"),
    ("filter", b'{"Pod": {}, "Nodes": {"items": [{}]}}', "Nodes.items[0]: a Node needs"),
    ("prioritize", b'{"Pod": {}, "Nodes": {"items": 5}}', "Nodes.items: expected a list"),
    ("bind", b'{"PodName": 1}', "ExtenderBindingArgs.PodName"),
    ("bind", b'{"PodName": "a", "PodNamespace": "b", "PodUID": "c"}', "ExtenderBindingArgs.Node"),
    ("preempt", b'{"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": [{}]}}}', "UID"),
    ("preempt", b'{"Pod": {}, "NodeNameToVictims": {"a": []}}', "expected a JSON object"),
    ("filter", b"[" * 100_000, "request body"),
]


@pytest.mark.parametrize(("verb", "body", "message"), BAD_BODIES,
                         ids=[f"{v}:{b[:30]!r}" for v, b, _ in BAD_BODIES])
async def test_bad_bodies_are_400_with_a_json_error(verb: str, body: bytes, message: str) -> None:
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        status, answer = await post(s, f"{url}/{verb}", body)
        assert status == 400
        assert message in answer["Error"]


async def test_body_over_the_limit_is_400() -> None:
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    cfg = ExtenderConfig(host="127.0.0.1", port=0, max_body_bytes=4096)
    body = json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"] * 2000})
    async with serving(cluster, cfg) as url, aiohttp.ClientSession() as s:
        status, answer = await post(s, f"{url}/filter", body)
        assert status == 400 and "over the limit of 4096 bytes" in answer["Error"]

        async def chunks():  # no Content-Length: the limit still holds
            for _ in range(10):
                yield b" " * 1000
        async with s.post(f"{url}/filter", data=chunks()) as r:
            assert r.status == 400 and "over the limit" in (await r.json())["Error"]
        status, _ = await post(s, f"{url}/filter",
                               json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]}))
        assert status == 200


async def test_preempt_over_http_keeps_only_victims_that_free_a_good_set() -> None:
    # DGX-1: a holds 0-3 (one quad), b holds 4-7. A required NVLink 4-GPU pod needs one
    # whole quad; the scheduler proposes both pods and a CPU-only pod as victims.
    ids = [f"GPU-00000000-0000-0000-0000-00000000000{i}" for i in range(8)]
    pods = [gpu_pod("a", gpus=4, node="n", annotations={
                "gputopo.io/assigned-gpus": json.dumps({"main": ids[:4]})}),
            gpu_pod("b", gpus=4, node="n", annotations={
                "gputopo.io/assigned-gpus": json.dumps({"main": ids[4:]})})]
    cluster = memory_cluster([{"name": "n", "topology": "dgx1-v100"},
                              {"name": "pcie", "topology": "pcie-8gpu-sys"}], pods)
    nv = {"gputopo.io/min-link": "nvlink", "gputopo.io/link-policy": "required"}
    body = json.dumps({
        "Pod": gpu_pod("big", gpus=4, annotations=nv),
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            "n": {"Pods": [{"UID": "uid-a"}, {"UID": "uid-b"}, {"UID": "uid-cpu"}],
                  "NumPDBViolations": 1},
            "pcie": {"Pods": [{"UID": "uid-x"}], "NumPDBViolations": 0},
        },
    })
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        status, answer = await post(s, f"{url}/preempt", body)
    assert status == 200
    # pcie can never give NVLink: dropped. On n one quad's pod suffices (a, the lower UID
    # of the two equal choices), the CPU-only victim is kept (the scheduler's reason).
    assert answer == {"NodeNameToMetaVictims": {
        "n": {"Pods": [{"UID": "uid-cpu"}, {"UID": "uid-a"}], "NumPDBViolations": 1}}}


async def test_preempt_passes_through_pods_without_a_required_constraint() -> None:
    cluster = memory_cluster([{"name": "n", "topology": "dgx1-v100"}])
    victims = {"n": {"Pods": [{"metadata": {"uid": "v1"}}], "NumPDBViolations": 0}}
    body = json.dumps({"Pod": gpu_pod(), "NodeNameToVictims": victims})
    async with serving(cluster) as url, aiohttp.ClientSession() as s:
        _, answer = await post(s, f"{url}/preempt", body)
    assert answer == {"NodeNameToMetaVictims": {"n": {"Pods": [{"UID": "v1"}],
                                                      "NumPDBViolations": 0}}}


def _has_cryptography() -> bool:
    return importlib.util.find_spec("cryptography") is not None


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1: with ``cryptography`` when installed, else openssl."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    if _has_cryptography():
        import datetime as dt
        import ipaddress

        # imported by name: an optional package, not a dependency of the project
        x509 = importlib.import_module("cryptography.x509")
        hashes = importlib.import_module("cryptography.hazmat.primitives.hashes")
        serialization = importlib.import_module("cryptography.hazmat.primitives.serialization")
        ec = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ec")
        name_oid = importlib.import_module("cryptography.x509.oid").NameOID

        k = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(name_oid.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(k.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.SubjectAlternativeName(
                 [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(k, hashes.SHA256()))
        cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return cert, key
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None and not _has_cryptography(),
                    reason="cannot make a self-signed certificate: neither the cryptography "
                           "package nor the openssl CLI is available")
async def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    cfg = ExtenderConfig(host="127.0.0.1", port=0, tls_cert_file=str(cert),
                         tls_key_file=str(key))
    server_ctx = ssl_context(cfg)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    async with serving(cluster, cfg, ssl_context=server_ctx) as url:
        assert url.startswith("https://")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as s:
            status, answer = await post(s, f"{url}/filter",
                                        json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]}))
            assert status == 200 and answer["NodeNames"] == ["a"]
        # a client that does not trust the certificate is refused
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await post(s, f"{url}/filter", "{}")
