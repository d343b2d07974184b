"""`invoke container.run -- CMD`: a command inside the build container.

Owns what the container sees of the host, as kas-container does for its users: the
checkout, the download cache (``~/.cache/netvm`` or ``$NETVM_CACHE``) and ccache's
directory, each mounted at the same path it has on the host, so paths in logs, errors
and the manifest read the same inside and out, and a second build in a fresh container
reuses what the first one downloaded and compiled. A build root outside the checkout
(``$NETVM_BUILD_DIR``) and the paths in other ``NETVM_*`` variables (an SDK, libvmm,
sDDF) are mounted the same way; ``--mount PATH`` adds more, read-only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from netvm.builder.build import BUILD_CONTAINER_ENV
from netvm.container.podman import Podman
from netvm.core.errors import Finding, UserError
from netvm.core.workspace import Workspace

# Variables passed on as they are: CI systems' markers (progress output looks at them)
# and the terminal type.
PASSED = ("CI", "TERM", "GITHUB_ACTIONS", "GITLAB_CI")


@dataclass(frozen=True)
class Mount:
    path: Path  # the same on both sides
    writable: bool

    def flag(self) -> str:
        return f"{self.path}:{self.path}:{'rw' if self.writable else 'ro'}"


def ccache_dir(env: Mapping[str, str]) -> Path:
    """ccache's directory on the host: $CCACHE_DIR, else ccache's own default for a
    user without the legacy ~/.ccache."""
    if env.get("CCACHE_DIR"):
        return Path(env["CCACHE_DIR"])
    legacy = Path.home() / ".ccache"
    if legacy.is_dir():
        return legacy
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ccache"


def _inside(path: Path, mounts: Sequence[Mount]) -> bool:
    return any(path == m.path or m.path in path.parents for m in mounts)


def mounts_and_env(
    ws: Workspace, env: Mapping[str, str], extra: Sequence[str]
) -> tuple[list[Mount], dict[str, str]]:
    """What the container mounts and the variables it gets, for this host's `env`."""
    cache = ws.cache.resolve()
    ccache = ccache_dir(env).resolve()
    mounts = [Mount(ws.root.resolve(), True), Mount(cache, True), Mount(ccache, True)]
    out_env = {"NETVM_CACHE": str(cache), "CCACHE_DIR": str(ccache)}
    build_root = ws.build_root.resolve()
    if not _inside(build_root, mounts):
        mounts.append(Mount(build_root, True))
    for name, value in sorted(env.items()):
        if name in PASSED:
            out_env[name] = value
        if not name.startswith("NETVM_") or name in out_env:
            continue
        out_env[name] = value
        path = Path(value)
        if path.is_absolute() and path.exists() and not _inside(path.resolve(), mounts):
            mounts.append(Mount(path.resolve(), name == "NETVM_BUILD_DIR"))
    for i, raw in enumerate(extra):
        path = Path(raw).expanduser()
        if not path.exists():
            raise UserError(
                [
                    Finding(
                        "",
                        f"--mount[{i}]",
                        f"{raw}: no such file or directory",
                        "give a path on this host to mount read-only at the same path",
                    )
                ]
            )
        if not _inside(path.resolve(), mounts):
            mounts.append(Mount(path.resolve(), False))
    return mounts, out_env


def run_command(
    ws: Workspace,
    podman: Podman,
    ref: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    extra_mounts: Sequence[str] = (),
    interactive: bool = False,
) -> list[str]:
    """The podman command line that runs `argv` in image `ref` for this workspace."""
    mounts, out_env = mounts_and_env(ws, env, extra_mounts)
    out_env[BUILD_CONTAINER_ENV] = ref
    for m in mounts:
        if m.writable:
            m.path.mkdir(parents=True, exist_ok=True)
    args = ["--rm", "--network", "host", "--security-opt", "label=disable"]
    args += podman.ulimits
    if interactive:
        args += ["-i", "-t"]
    for m in mounts:
        args += ["-v", m.flag()]
    for name, value in out_env.items():
        args += ["-e", f"{name}={value}"]
    args += ["-w", str(ws.root.resolve()), ref, *argv]
    return podman.command("run", *args)


def run_in_container(
    ws: Workspace,
    podman: Podman,
    ref: str,
    argv: Sequence[str],
    *,
    extra_mounts: Sequence[str] = (),
) -> int:
    """Run `argv` in the container; its exit status."""
    if not argv:
        raise UserError(
            "container.run needs a command after --",
            hint="invoke container.run -- invoke build --board odroidc4",
        )
    if not podman.image_exists(ref):
        raise UserError(
            f"the build container {ref} does not exist on this host (the inputs it is "
            "tagged by changed, or it was never built)",
            hint="invoke container.build",
        )
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    cmd = run_command(
        ws, podman, ref, argv, os.environ, extra_mounts=extra_mounts, interactive=interactive
    )
    return subprocess.run(cmd, check=False).returncode
