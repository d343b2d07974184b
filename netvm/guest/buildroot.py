"""The Buildroot external tree for users who build the guest rootfs with Buildroot.

Owns exporting ``build/<board>/buildroot-external/``: ``external.desc``,
``external.mk``, ``Config.in``, ``configs/netvm_<board>_defconfig`` (python3, the
overlay, the post-build script) and ``board/<board>/`` with the staged overlay. It
cannot be built here (Buildroot downloads its sources); `netvm.guest.rootfs` takes its
output back in through the ``cpio`` provider.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from netvm.board import Board
from netvm.guest.render import environment, header_text


def defconfig_name(board: Board) -> str:
    return f"netvm_{board.name}_defconfig"


def export_external_tree(board: Board, overlay: Path, dest: Path, root: Path) -> Path:
    """Write the tree under `dest` (replacing it) and return `dest`."""
    if dest.exists():
        shutil.rmtree(dest)
    env = environment(root)
    header = header_text(board, root)
    board_dir = dest / "board" / board.name
    files = {
        dest / "external.desc": "external.desc.j2",
        dest / "external.mk": "external.mk.j2",
        dest / "Config.in": "Config.in.j2",
        dest / "configs" / defconfig_name(board): "defconfig.j2",
        board_dir / "post-build.sh": "post-build.sh.j2",
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = env.get_template(f"buildroot/{template}").render(board=board, header=header)
        path.write_text(text)
    (board_dir / "post-build.sh").chmod(0o755)
    shutil.copytree(overlay, board_dir / "rootfs_overlay", symlinks=True)
    return dest
