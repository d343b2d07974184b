"""`invoke info`: what a board's next build would take and do, without building.

Owns the report: the resolved inputs (the kernel source and its version, the Microkit
inputs given and the board's pins for them, the host tools' versions as the manifest
records them, next to the last build's), and for every step whether the next build
reuses it ("cached") or runs it again and which input changed since the last build
(`netvm.builder.build.plan_build`, from the state files the last build wrote).
Must not: run a step, or decide what a step's inputs are (build.py does).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from netvm.board import Board, GitPin
from netvm.builder.build import BuildOptions, image_board, plan_build
from netvm.builder.manifest import MANIFEST_NAME
from netvm.core.workspace import Workspace
from netvm.microkit.handoff import INPUTS, MicrokitInputs, host_platform


def board_info(board: Board, ws: Workspace, options: BuildOptions) -> dict[str, Any]:
    """The report as a JSON document (what `invoke info --json` prints)."""
    plan = plan_build(board, ws, options)
    last = _last_versions(plan.build_dir / MANIFEST_NAME)
    tools = {
        name: {"now": version, "last_build": last.get(name)}
        for name, version in plan.versions.items()
        if name not in ("kernel", "kernel_source")
    }
    return {
        "board": board.name,
        "board_file": ws.display(board.file),
        "build_dir": ws.display(plan.build_dir),
        "kernel": {
            "source": plan.versions["kernel_source"],
            "path": str(plan.src.path),
            "version": plan.src.version,
            "last_build": last.get("kernel"),
        },
        "microkit": _microkit(board, options.microkit),
        "tools": tools,
        "steps": [p.as_dict() for p in plan.steps],
    }


def _last_versions(manifest: Path) -> dict[str, str]:
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    versions = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(versions, dict):
        return {}
    return {str(k): str(v) for k, v in versions.items()}


def _pin(pin: GitPin | None) -> str | None:
    if pin is None:
        return None
    return f"{pin.repository} at {pin.commit}" if pin.repository else f"commit {pin.commit}"


def _microkit(board: Board, inputs: MicrokitInputs | None) -> dict[str, Any] | None:
    """The pins of the board whose build makes loader.img, and the inputs given."""
    target = image_board(board)
    if target is None or target.microkit is None:
        return None
    spec = target.microkit
    platform_name = host_platform()
    given = {
        "microkit_sdk": inputs.sdk if inputs else None,
        "libvmm": inputs.libvmm if inputs else None,
        "sddf": inputs.sddf if inputs else None,
    }
    return {
        "board": f"{spec.board} ({spec.config})",
        "pinned": {
            "microkit_sdk": f"{spec.sdk_version}, archive sha256 for {platform_name}: "
            f"{spec.sdk_archive_sha256(platform_name) or 'not pinned'}",
            "libvmm": _pin(spec.libvmm),
            "sddf": _pin(spec.sddf),
            "sdfgen": f"{spec.sdfgen.version} "
            f"({_pin(GitPin(spec.sdfgen.repository, spec.sdfgen.commit))})",
        },
        "given": {
            name: (f"{found.path} ({found.origin})" if found else None)
            for name, found in given.items()
        }
        | {"python": inputs.python if inputs else None},
    }


def format_info(doc: dict[str, Any]) -> str:
    """The report as text, one fact a line."""
    lines = [f"board {doc['board']} ({doc['board_file']}), builds into {doc['build_dir']}"]
    k = doc["kernel"]
    lines.append(f"kernel source: {k['source']}, version {k['version']}{_was(k)}")
    lines.append(f"  tree: {k['path']}")
    mk = doc["microkit"]
    if mk is None:
        lines.append("microkit: none (the board has no microkit section: no loader.img)")
    else:
        lines.append(f"microkit: board {mk['board']}")
        for name in ("microkit_sdk", "libvmm", "sddf", "sdfgen"):
            pinned = mk["pinned"][name] or "not pinned"
            lines.append(f"  {name}: pinned {pinned}")
            if name in INPUTS:
                flag, var, _what = INPUTS[name]
                given = mk["given"].get(name) or f"not given ({flag}, ${var} or invoke.yaml)"
                lines.append(f"    given: {given}")
        lines.append(f"  python for meta.py: {mk['given']['python']}")
    lines.append("host tools (as the manifest records them):")
    for name, v in doc["tools"].items():
        lines.append(f"  {name}: {v['now']}{_was(v, 'now')}")
    lines.append("next build:")
    for step in doc["steps"]:
        status = step["status"] + (f": {step['reason']}" if step["reason"] else "")
        lines.append(f"  {step['name']:<14} {status}")
    return "\n".join(lines)


def _was(entry: dict[str, Any], key: str = "version") -> str:
    """ " (last build: X)" when the last build recorded another value."""
    last = entry.get("last_build")
    if last is None:
        return " (not built yet)" if key == "version" else ""
    return "" if last == entry[key] else f" (last build: {last})"
