"""The floor of the extender protocol: an extender that decides nothing.

    python benchmarks/null_extender.py --kubeconfig FILE --port PORT

``bench_scheduler.py`` runs it as its ``null`` mode, under the same
KubeSchedulerConfiguration as the real extender (filter, prioritize, bind; names only).
Filter decodes the request and passes every node, prioritize scores none (``[]``),
bind makes the Binding the scheduler would have made itself: one POST over one kept-alive
aiohttp connection pool. What kube-scheduler loses with it is what the HTTP extender
protocol costs on this machine before the extender does any work of its own; the real
extender's ratio is read against it.
"""

from __future__ import annotations

import argparse
import json
import ssl
from pathlib import Path
from typing import Any

import yaml
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web


def _api(kubeconfig: Path) -> tuple[str, str, ssl.SSLContext]:
    cfg = yaml.safe_load(kubeconfig.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    token = cfg["users"][0]["user"]["token"]
    return (
        cluster["server"],
        token,
        ssl.create_default_context(cafile=cluster["certificate-authority"]),
    )


def app(kubeconfig: Path) -> web.Application:
    server, token, ctx = _api(kubeconfig)
    state: dict[str, Any] = {}

    async def start(_: web.Application) -> Any:
        state["session"] = ClientSession(
            connector=TCPConnector(ssl=ctx, limit=32),
            timeout=ClientTimeout(total=10),
            headers={"Authorization": f"Bearer {token}"},
        )
        yield
        await state["session"].close()

    async def filter_(request: web.Request) -> web.Response:
        args = json.loads(await request.read())
        return web.json_response(
            {
                "NodeNames": args.get("NodeNames") or [],
                "FailedNodes": {},
                "FailedAndUnresolvableNodes": {},
                "Error": "",
            }
        )

    async def prioritize(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=b"[]", content_type="application/json")

    async def bind(request: web.Request) -> web.Response:
        args = json.loads(await request.read())
        ns, name = args["PodNamespace"], args["PodName"]
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": args["PodUID"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": args["Node"]},
        }
        url = f"{server}/api/v1/namespaces/{ns}/pods/{name}/binding"
        async with state["session"].post(url, json=binding) as resp:
            error = "" if resp.status < 300 else f"{resp.status}: {await resp.text()}"
        return web.json_response({"Error": error})

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"pods": 0, "binds_in_flight": 0})

    a = web.Application(client_max_size=256 << 20)
    a.cleanup_ctx.append(start)
    a.router.add_post("/filter", filter_)
    a.router.add_post("/prioritize", prioritize)
    a.router.add_post("/bind", bind)
    a.router.add_get("/readyz", ok)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    web.run_app(app(a.kubeconfig), host=a.host, port=a.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
