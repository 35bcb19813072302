"""Who may bind: client certificates for the verbs, open probes, and the warning when the
extender listens unauthenticated where others can reach it."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from extender.config import ExtenderConfig
from extender.main import serve, ssl_context

from .helpers import gpu_pod, memory_cluster, serving, watching_logs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="needs the openssl command to make certificates")


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "1", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.crt", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)


def _leaf(d: Path, name: str, ca: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext",
             cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _leaf(d, "scheduler", "ca", "extendedKeyUsage=clientAuth\n")
    _leaf(d, "stranger", "other-ca", "extendedKeyUsage=clientAuth\n")
    return Pki(ca=d / "ca.crt", server_cert=d / "server.crt", server_key=d / "server.key",
               client_cert=d / "scheduler.crt", client_key=d / "scheduler.key",
               stranger_cert=d / "stranger.crt", stranger_key=d / "stranger.key")


def client(pki: Pki, cert: Path | None = None, key: Path | None = None) -> aiohttp.ClientSession:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


FILTER = json.dumps({"Pod": gpu_pod(), "NodeNames": ["a"]})


async def test_verbs_need_a_client_certificate_signed_by_the_ca(pki: Pki) -> None:
    cfg = ExtenderConfig(host="127.0.0.1", port=0, tls_cert_file=str(pki.server_cert),
                         tls_key_file=str(pki.server_key), client_ca_file=str(pki.ca))
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    async with serving(cluster, cfg, ssl_context=ssl_context(cfg)) as url:
        async with client(pki) as s:
            for verb in ("filter", "prioritize", "bind", "preempt"):
                async with s.post(f"{url}/{verb}", data=FILTER) as r:
                    assert r.status == 403
                    assert "client certificate" in (await r.json())["Error"]
            for path in ("healthz", "readyz", "metrics"):  # the kubelet and Prometheus
                async with s.get(f"{url}/{path}") as r:
                    assert r.status == 200
            for path in ("topology", "topology/a", ""):
                async with s.get(f"{url}/{path}") as r:
                    assert r.status == 403
        async with client(pki, pki.client_cert, pki.client_key) as s:
            async with s.post(f"{url}/filter", data=FILTER) as r:
                assert r.status == 200 and (await r.json())["NodeNames"] == ["a"]
            async with s.get(f"{url}/topology/a") as r:
                assert r.status == 200
        async with client(pki, pki.stranger_cert, pki.stranger_key) as s:
            with pytest.raises(aiohttp.ClientError):  # refused in the TLS handshake
                async with s.post(f"{url}/filter", data=FILTER) as r:
                    await r.read()


async def test_public_views_open_the_page_and_topology_only(pki: Pki) -> None:
    cfg = ExtenderConfig(host="127.0.0.1", port=0, tls_cert_file=str(pki.server_cert),
                         tls_key_file=str(pki.server_key), client_ca_file=str(pki.ca),
                         public_views=True)
    cluster = memory_cluster([{"name": "a", "topology": "hgx-h100"}])
    async with serving(cluster, cfg, ssl_context=ssl_context(cfg)) as url, client(pki) as s:
        for path in ("topology", "topology/a", ""):
            async with s.get(f"{url}/{path}") as r:
                assert r.status == 200
        async with s.post(f"{url}/bind", data="{}") as r:
            assert r.status == 403


async def run_serve(cfg: ExtenderConfig) -> list[str]:
    """Start the command's server, stop it once it serves; its log."""
    stop = asyncio.Event()
    with watching_logs() as logs:
        await serve(cfg, memory_cluster([{"name": "a", "topology": "hgx-h100"}]), stop=stop,
                    ready=lambda port: stop.set(), tune_gc=False)
    return [f"{r.levelname} {r.getMessage()}" for r in logs.records]


async def test_listening_unauthenticated_beyond_loopback_is_a_warning(pki: Pki) -> None:
    log = await run_serve(ExtenderConfig(host="0.0.0.0", port=0))
    assert any(m.startswith("WARNING listening without client authentication host=0.0.0.0")
               for m in log), log
    log = await run_serve(ExtenderConfig(host="127.0.0.1", port=0))
    assert not any("without client authentication" in m for m in log)
    log = await run_serve(ExtenderConfig(
        host="0.0.0.0", port=0, tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key), client_ca_file=str(pki.ca)))
    assert not any("without client authentication" in m for m in log)
    assert any("client_auth=True" in m for m in log)
