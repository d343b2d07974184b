"""A small command-line parser for the driver's fixed set of options.

Why not argparse: it imports ``re`` and ``gettext``, a large share of the driver's cold
start under QEMU's TCG (docs/driver.md, "Start-up"), for a dozen fixed options. This
keeps argparse's conventions for them: ``--name VALUE`` or ``--name=VALUE``, flags
without a value, ``--help``, and on a mistake a usage line plus ``PROG: error: ...`` on
stderr, exit 2.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn, TypeVar

    A = TypeVar("A", bound="Args")

FLAG = "flag"  # Option.kind of an option that takes no value
HELP_WIDTH = 78


class Option:
    __slots__ = ("choices", "default", "dest", "help", "kind", "metavar", "name")

    def __init__(
        self,
        name: str,
        help: str,
        *,
        kind: type | str = str,
        default: object = None,
        choices: tuple[str, ...] = (),
        metavar: str = "",
    ) -> None:
        self.name = name
        self.dest = name.lstrip("-").replace("-", "_")
        self.help = help
        self.kind = kind
        self.default = False if kind == FLAG else default
        self.choices = choices
        self.metavar = metavar or ("{" + ",".join(choices) + "}" if choices else "VALUE")


class UsageError(Exception):
    pass


class Args:
    """Parsed values, one attribute per option's dest; a subclass declares their types."""

    def __init__(self, options: Sequence[Option]) -> None:
        for opt in options:
            setattr(self, opt.dest, opt.default)


def _convert(opt: Option, text: str) -> object:
    if opt.choices and text not in opt.choices:
        choices = ", ".join(repr(c) for c in opt.choices)
        raise UsageError(f"argument {opt.name}: invalid choice: {text!r} (choose from {choices})")
    if opt.kind in (int, float):
        try:
            return opt.kind(text)
        except ValueError:
            name = opt.kind.__name__
            raise UsageError(f"argument {opt.name}: invalid {name} value: {text!r}") from None
    return text


def parse(options: Sequence[Option], argv: Sequence[str], into: type[A]) -> A | None:
    """The parsed arguments, or None when --help was asked for. Raises UsageError."""
    by_name = {opt.name: opt for opt in options}
    args = into(options)
    words = list(argv)
    while words:
        word = words.pop(0)
        if word in ("-h", "--help"):
            return None
        name, eq, value = word.partition("=")
        opt = by_name.get(name)
        if opt is None:
            near = [o.name for o in options if name.startswith("--") and o.name.startswith(name)]
            hint = f" (did you mean {' or '.join(near)}?)" if near else ""
            raise UsageError(f"unrecognized argument: {word}{hint}")
        if opt.kind == FLAG:
            if eq:
                raise UsageError(f"argument {opt.name}: ignored explicit argument {value!r}")
            setattr(args, opt.dest, True)
            continue
        if not eq:
            if not words or (words[0].startswith("--") and words[0] != "--"):
                raise UsageError(f"argument {opt.name}: expected one argument")
            value = words.pop(0)
        setattr(args, opt.dest, _convert(opt, value))
    return args


def _wrap(text: str, indent: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and indent + len(line) + 1 + len(word) > HELP_WIDTH:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def usage(prog: str) -> str:
    return f"usage: {prog} [options]"


def help_text(prog: str, description: str, options: Sequence[Option]) -> str:
    out = [usage(prog), "", *_wrap(description, 0), "", "options:", "  -h, --help"]
    out += ["      show this help message and exit"]
    for opt in options:
        out.append(f"  {opt.name}" + ("" if opt.kind == FLAG else f" {opt.metavar}"))
        text = opt.help.replace("%(default)s", str(opt.default))
        out += ["      " + ln for ln in _wrap(text, 6)]
    return "\n".join(out) + "\n"


def parse_or_exit(
    prog: str, description: str, options: Sequence[Option], argv: Sequence[str], into: type[A]
) -> A:
    """parse(), printing help (exit 0) or the usage error (exit 2) as argparse does."""
    try:
        args = parse(options, argv, into)
    except UsageError as exc:
        fail(prog, str(exc))
    if args is None:
        sys.stdout.write(help_text(prog, description, options))
        sys.exit(0)
    return args


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{usage(prog)}\n{prog}: error: {message}\n")
    sys.exit(2)
