"""A throwaway distribution for registry tests: modules plus a ``.dist-info`` with entry points, on ``sys.path``.

``importlib.metadata`` finds it exactly as it finds an installed wheel, so the registry sees real entry points with
their distribution name.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

from llama_batches.registry import ENTRY_POINT_GROUP

__all__ = ["forget_modules", "write_distribution"]


def write_distribution(
    site: Path, name: str, modules: Mapping[str, str], entry_points: Mapping[str, str], *, version: str = "1.0"
) -> Path:
    """Write ``modules`` (relative path -> source) and ``<name>-<version>.dist-info`` declaring ``entry_points``
    (entry-point name -> ``module:attribute``) in the registry's group under ``site``; returns ``site``."""
    for relative, source in modules.items():
        path = site / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}")
    return site


def forget_modules(*prefixes: str) -> None:
    """Drop the modules a test imported from its distribution, so that the next test imports them afresh."""
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]
