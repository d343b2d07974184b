"""Kernel config fragments and the audit of what the kernel made of them.

Owns parsing fragments (``CONFIG_X=v`` / ``# CONFIG_X is not set``) with their file and
line, reading a resolved ``.config``, comparing the two, and explaining each mismatch
with kconfiglib: the unmet dependency terms and their values, "no prompt", or "not
defined in this kernel". The kernel's own ``make`` result stays the ground truth;
kconfiglib is only asked *why*. Running make is `netvm.guest.kernel`'s business.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netvm.core.hosttools import compiler_version

_SET = re.compile(r"^CONFIG_([A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# CONFIG_([A-Za-z0-9_]+) is not set$")


@dataclass(frozen=True)
class Request:
    symbol: str
    value: str  # y, m, n, or the literal (strings keep their quotes)
    file: Path
    line: int


@dataclass(frozen=True)
class Mismatch:
    request: Request
    actual: str  # "n" for unset bools, "" when the symbol is absent
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "symbol": f"CONFIG_{self.request.symbol}",
            "requested": self.request.value,
            "actual": self.actual,
            "file": str(self.request.file),
            "line": self.request.line,
            "reason": self.reason,
        }


def parse_fragment(path: Path) -> list[Request]:
    """Every CONFIG_ request in a fragment, in order; comments and blanks are skipped."""
    out: list[Request] = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if m := _SET.match(line):
            out.append(Request(m[1], m[2], path, n))
        elif m := _UNSET.match(line):
            out.append(Request(m[1], "n", path, n))
    return out


def merged_requests(fragments: Sequence[Path]) -> dict[str, Request]:
    """Later fragments override earlier ones, as merge_config.sh does."""
    merged: dict[str, Request] = {}
    for frag in fragments:
        for req in parse_fragment(frag):
            merged.pop(req.symbol, None)
            merged[req.symbol] = req
    return merged


def read_config(path: Path) -> dict[str, str]:
    """A resolved .config as symbol -> value ("n" for '# ... is not set')."""
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if m := _SET.match(line):
            values[m[1]] = m[2]
        elif m := _UNSET.match(line):
            values[m[1]] = "n"
    return values


def find_mismatches(requests: dict[str, Request], config: dict[str, str]) -> list[Request]:
    """Requests the resolved config does not honour (an absent bool counts as n)."""
    wrong = []
    for req in requests.values():
        actual = config.get(req.symbol, "n" if req.value == "n" else "")
        if actual != req.value:
            wrong.append(req)
    return wrong


# ---------------------------------------------------------------------------------------
# Reasons, from kconfiglib


@contextlib.contextmanager
def _in_dir(path: Path) -> Iterator[None]:
    # Kconfig's $(shell,...) probes (cc-option) make temporary files in the cwd.
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def kconfig_env(src: Path, arch: str, cross_compile: str, kernel_version: str) -> dict[str, str]:
    """The environment the kernel's Kconfig files expect when parsed outside make."""
    cc = f"{cross_compile}gcc"
    cc_text = compiler_version(cc)
    return {
        "srctree": str(src),
        "ARCH": arch,
        "SRCARCH": arch,
        "KERNELVERSION": kernel_version,
        "CC": cc,
        "LD": f"{cross_compile}ld",
        "HOSTCC": "gcc",
        "HOSTCXX": "g++",
        "RUSTC": "rustc",
        "BINDGEN": "bindgen",
        "CLANG_FLAGS": "",
        "CC_VERSION_TEXT": cc_text,
    }


def load_kconfig(src: Path, env: dict[str, str]) -> Any:
    """Parse the kernel's Kconfig tree with kconfiglib (about 3 s for arm64 6.12)."""
    import kconfiglib

    class _Kconfig(kconfiglib.Kconfig):  # type: ignore[misc]
        # Kernels since ~5.13 write a bare `modules` attribute that kconfiglib 14.1.0
        # predates; it is the old `option modules`.
        def _open(self, filename: str, mode: str) -> Any:
            f = super()._open(filename, mode)
            if "r" not in mode or not str(filename).endswith(("Kconfig", ".kconfig")):
                return f
            with f:
                text = re.sub(r"(?m)^(\s+)modules\s*$", r"\1option modules", f.read())
            return io.StringIO(text)

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with _in_dir(src):
            return _Kconfig("Kconfig", warn=False, suppress_traceback=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def explain(kconf: Any, req: Request) -> str:
    """Why `req` could not be honoured, in Kconfig's own terms."""
    import kconfiglib

    sym = kconf.syms.get(req.symbol)
    if sym is None or not sym.nodes:
        return "not defined in this kernel"
    want = req.value
    if want in ("y", "m") and sym.orig_type in (kconfiglib.BOOL, kconfiglib.TRISTATE):
        need = 2 if want == "y" else 1
        terms = kconfiglib.split_expr(sym.direct_dep, kconfiglib.AND)
        if sym.choice is not None:
            # A choice member inherits the choice's dependencies; name those instead.
            terms = [t for t in terms if t is not sym.choice]
            terms += kconfiglib.split_expr(sym.choice.direct_dep, kconfiglib.AND)
        unmet = [
            f"{kconfiglib.expr_str(term)} (={kconfiglib.TRI_TO_STR[kconfiglib.expr_value(term)]})"
            for term in terms
            if kconfiglib.expr_value(term) < need
        ]
        if unmet:
            return "depends on " + " && ".join(unmet)
        if not any(node.prompt for node in sym.nodes):
            return "no prompt: cannot be set from a fragment"
        if want == "m" and kconf.modules.tri_value == 0:
            return "modules are disabled (MODULES=n)"
        if sym.choice is not None:
            chosen = sym.choice.selection
            return f"its choice selects {chosen.name if chosen else 'nothing'} instead"
        return f"limited to {sym.str_value} by its visibility"
    if want == "n" and sym.rev_dep is not kconf.n and kconfiglib.expr_value(sym.rev_dep):
        active = [
            f"{kconfiglib.expr_str(term)} (=y)"
            for term in kconfiglib.split_expr(sym.rev_dep, kconfiglib.OR)
            if kconfiglib.expr_value(term)
        ]
        return "selected by " + " || ".join(active)
    if want == "n" and not any(node.prompt for node in sym.nodes):
        return "no prompt: its default decides and cannot be overridden from a fragment"
    if want == "n" and sym.choice is not None:
        return "a choice needs one of its options selected"
    if not any(node.prompt for node in sym.nodes):
        return "no prompt: cannot be set from a fragment"
    return f"resolved to {sym.str_value or 'nothing'} (range or type constraints)"
