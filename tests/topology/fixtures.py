"""Where the shared ``topo -m`` fixtures are, and which preset each one backs.

The fixtures live outside the repository, in ``../shared/fixtures/topologies`` relative
to the repository root (a checkout may also carry them as ``shared/`` inside it); tests
that need them skip, saying so, when neither is there.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _shared() -> Path:
    for candidate in (REPO_ROOT / "shared", REPO_ROOT.parent / "shared"):
        if (candidate / "fixtures" / "topologies").is_dir():
            return candidate
    return REPO_ROOT.parent / "shared"


SHARED = _shared()
TOPOLOGY_DIR = SHARED / "fixtures" / "topologies"
SKIP_REASON = f"shared fixtures not found at {TOPOLOGY_DIR} (expected ../shared next to the repo)"

#: Preset name -> fixture file stem it was made from.
PRESET_FIXTURES = {
    "dgx1-v100": "dgx1_v100_hybrid_cube_mesh_1nic",
    "dgx-a100": "dgx_a100_8gpu_nv12_10nics",
    "hgx-h100": "hgx_h100_class_8gpu_nv18_13nics",
    "aws-p4d": "aws_p4d_24xlarge",
    "pcie-8gpu-nvlink-pairs": "pcie_8gpu_nvlink_bridge_pairs_nv12",
    "pcie-4gpu-nvlink-pairs": "pcie_4x_a100_nvlink_bridge_pairs_2nics",
    "pcie-8gpu-sys": "pcie_8x_rtx4090_dual_socket_all_sys_2nics",
    "workstation-2gpu-nvlink": "workstation_2x_rtx3090_nvlink_bridge_nv4",
    "gb200-4gpu": "gb200_4gpu_nv18",
}

PARTIAL_STEM = "PARTIAL_dgx2_16gpu_nvswitch_nv6_10nics"


def have_fixtures() -> bool:
    return TOPOLOGY_DIR.is_dir()


needs_fixtures = pytest.mark.skipif(not have_fixtures(), reason=SKIP_REASON)


def fixture_path(stem: str) -> Path:
    """The fixture file ``stem``.txt; skips the calling test when the fixtures are absent."""
    if not have_fixtures():
        pytest.skip(SKIP_REASON)
    return TOPOLOGY_DIR / f"{stem}.txt"


def fixture_text(stem: str) -> str:
    return fixture_path(stem).read_text(encoding="utf-8")


def complete_fixture_stems() -> list[str]:
    """Every fixture that must parse (all but the PARTIAL one); empty when absent.

    Listed from the directory, so a fixture added later is tested too.
    """
    if not have_fixtures():
        return []
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.txt") if not p.stem.startswith("PARTIAL"))
