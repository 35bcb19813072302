"""The image: what the Dockerfile runs and what the manifests ask of it.

There is no container engine here to build it; these checks read the Dockerfile and the
manifests: the entry points are the package's console scripts, the image runs as a
non-root user by default, every package of the distribution goes into it, and every
container of the manifests that uses the image names one of its console scripts.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from typing import Any

from tests.install.manifests import ROOT, installed

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = set(PROJECT["project"]["scripts"])
IMAGE = "ghcr.io/gputopo/gpu-topology-scheduler"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _instructions()
    last = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last:]


def _exec_form(args: str) -> list[str]:
    import json

    value: Any = json.loads(args) if args.startswith("[") else shlex.split(args)
    return [str(v) for v in value]


def test_the_entry_point_is_a_console_script() -> None:
    final = _final_stage()
    run = [_exec_form(a) for w, a in final if w in ("ENTRYPOINT", "CMD")]
    assert run, "the image's final stage names no ENTRYPOINT or CMD"
    assert run[0][0] in SCRIPTS, (run, SCRIPTS)
    assert {"gputopo-extender", "gputopo-device-plugin", "gputopo", "kubectl-gputopo"} <= SCRIPTS


def test_it_runs_as_a_non_root_user() -> None:
    users = [a for w, a in _final_stage() if w == "USER"]
    assert users, "no USER in the final stage: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid not in ("0", "root") and uid.isdigit(), users[-1]


def test_every_package_of_the_distribution_is_copied_in() -> None:
    packages = {p.rstrip("*") for p in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {a.split()[0].rstrip("/") for w, a in _instructions() if w == "COPY"
              and not a.startswith("--from")}
    assert packages <= copied, f"not copied into the image: {sorted(packages - copied)}"
    assert {"pyproject.toml"} <= {p for a in copied for p in a.split()}


def test_every_container_of_the_image_runs_one_of_its_console_scripts() -> None:
    seen = set()
    for obj in installed():
        spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
        for c in spec.get("containers") or []:
            if not c["image"].startswith(IMAGE + ":"):
                continue
            assert c["command"][0] in SCRIPTS, (obj["metadata"]["name"], c["command"])
            seen.add(c["command"][0])
            user = (c.get("securityContext") or {}).get("runAsUser",
                                                        (spec.get("securityContext") or {})
                                                        .get("runAsUser"))
            if c["command"][0] == "gputopo-extender":
                assert user == 65532
    assert seen == {"gputopo-extender", "gputopo-device-plugin"}
