"""netvm tasks: a thin invoke layer over the `netvm` package.

Each task parses its flags, calls one library function and prints the result. User
errors (`netvm.errors.UserError`) are printed without a traceback and exit with 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from invoke import Collection, Context, Exit, task

from netvm.board import load_board
from netvm.build import BuildOptions, build
from netvm.errors import USER_ERROR_EXIT, UserError
from netvm.render import render_all

ROOT = Path(__file__).resolve().parent
F = TypeVar("F", bound=Callable[..., Any])

BOARD_HELP = "board name under boards/ (e.g. odroidc4) or path to a board.yaml"


def user_errors(fn: F) -> F:
    """Turn a UserError into its findings on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise Exit(exc.render(), code=USER_ERROR_EXIT) from None

    return wrapper  # type: ignore[return-value]


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@task(help={"board": BOARD_HELP})
@user_errors
def render(c: Context, board: str = "odroidc4") -> None:
    """Render kernel fragments, overlay DTS, driver config and rootfs overlay."""
    b = load_board(board, ROOT)
    out = ROOT / "build" / b.name / "render"
    result = render_all(b, out, ROOT)
    print(
        f"rendered {len(result.files)} files under {out.relative_to(ROOT)} "
        f"({len(result.changed)} changed)"
    )


@task(
    help={
        "board": BOARD_HELP,
        "force": "re-run every step even if its inputs are unchanged",
        "kernel-src": "use this local kernel tree instead of the board's kernel source",
        "json": "print the manifest as JSON on stdout",
    }
)
@user_errors
def build_(
    c: Context,
    board: str = "odroidc4",
    force: bool = False,
    kernel_src: str | None = None,
    json_: bool = False,
) -> None:
    """Build the guest (render, kernel, rootfs, DTB, Microkit image) and write the manifest."""
    b = load_board(board, ROOT)
    options = BuildOptions(force=force, kernel_src=Path(kernel_src) if kernel_src else None)
    manifest = build(b, ROOT, options, progress=_progress)
    if json_:
        print(json.dumps(manifest, indent=2))
        return
    for step in manifest["steps"]:
        note = f"  {step['note']}" if step.get("note") else ""
        print(f"{step['name']:<9} {step['status']:<8} {step['seconds']:7.2f} s{note}")
    print(f"manifest: build/{b.name}/manifest.json")


@task(help={"board": BOARD_HELP})
@user_errors
def validate(c: Context, board: str = "odroidc4") -> None:
    """Check a board file (schema and layout) and report every finding."""
    b = load_board(board, ROOT)
    print(f"{b.file.relative_to(ROOT) if ROOT in b.file.parents else b.file}: ok")


ns = Collection()
ns.add_task(render)
ns.add_task(build_, name="build")
ns.add_task(validate)
