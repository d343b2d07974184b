"""How netvm declares its invoke tasks: one rule for every task's flags.

`tasks.py` imports `task` from here instead of invoke's. A task made with it has:

- no short flags invoke invents from the letters of each flag name (which gave `-d` five
  meanings across the tasks), only the fixed set in `SHORT_FLAGS`, the same flag in every
  task, none of them one of invoke's own core short flags;
- its default appended to each flag's help text, "(default: X)", unless the text already
  says its default (a flag whose signature default is None describes its own);
- a repeatable (list) flag that is an error when given without a value (invoke otherwise
  takes `--skip` with nothing after it as no flag at all);
- a refusal of invoke's core `--dry`: netvm's tasks run their work in Python, not through
  invoke's `run`, so `--dry` could not hold anything back.

Help texts themselves name the kind of value a flag takes ("BOARD: …", "DURATION: …",
"STEP (repeatable): …"); tests/test_cli.py checks that every flag of every task does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from invoke import Argument, Context, Exit, Task
from invoke import task as invoke_task

from netvm.core.errors import USER_ERROR_EXIT

# Long flag -> its one short flag, in every task that has the long flag.
SHORT_FLAGS: dict[str, str] = {
    "board": "b",
    "json": "j",
    "kernel-src": "k",
    "dry-run": "n",
    "verbose": "v",
}
# invoke's core flags that have short forms: a task's short flag must not reuse one.
CORE_SHORT_FLAGS = frozenset("cdDefFhlprRTVw")

DRY_REFUSAL = (
    "invoke --dry: netvm's tasks do their work in Python, not through shell commands "
    "invoke could echo instead, so --dry cannot hold them back; nothing was run "
    "(see what a build would do: invoke info --board B; flash and clean have --dry-run)"
)


def with_default(help_text: str, default: Any) -> str:
    """`help_text` with "(default: X)" appended, when there is a default worth showing
    and the text does not already name one."""
    if default in (None, False, "", []) or "(default" in help_text:
        return help_text
    return f"{help_text} (default: {default})"


class RepeatableArgument(Argument):
    """A list (repeatable) flag that needs a value each time it is given: invoke's parser
    demands a value of a flag whose raw value is still None when the next flag or the end
    comes, and a plain list flag starts as [], which let a bare `--skip` pass unseen.

    (A bare repetition after a value, `--skip kernel --skip`, still passes: the parser
    only looks at the raw value, which the first value set.)
    """

    @classmethod
    def like(cls, arg: Argument) -> RepeatableArgument:
        new = cls(
            names=arg.names,
            kind=list,
            default=arg.default,
            help=arg.help,
            positional=arg.positional,
            optional=arg.optional,
            attr_name=arg.attr_name,
        )
        new.raw_value = None
        return new

    def __repr__(self) -> str:
        # What the parser's errors show: "Flag '--skip' needed value and was not given one!"
        return repr(f"--{self.names[0]}")


class NetvmTask(Task[Callable[..., Any]]):
    """An invoke Task with netvm's flag rules (see the module docstring)."""

    def __init__(self, body: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_shortflags", False)
        super().__init__(body, *args, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts: dict[str, Any] = super().arg_opts(name, default, taken_names)
        long_name = opts["names"][0]
        short = SHORT_FLAGS.get(long_name)
        if short is not None and short not in taken_names:
            opts["names"] = [*opts["names"], short]
        if "help" in opts:
            opts["help"] = with_default(opts["help"], opts.get("default"))
        return opts

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        # invoke's get_arguments consumes the help dict; keep it for the next call (the
        # task is listed, parsed and shown more than once in a process, e.g. the tests).
        saved = dict(self.help)
        try:
            args = super().get_arguments(ignore_unknown_help)
        finally:
            self.help = saved
        return [RepeatableArgument.like(a) if a.kind is list else a for a in args]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        c = args[0] if args else None
        if isinstance(c, Context) and c.config.get("run", {}).get("dry"):
            raise Exit(f"error: {DRY_REFUSAL}", code=USER_ERROR_EXIT)
        return super().__call__(*args, **kwargs)


def task(*args: Any, **kwargs: Any) -> Callable[..., Any]:
    """invoke's `@task` / `@task(...)`, making a `NetvmTask`."""
    kwargs.setdefault("klass", NetvmTask)
    made: Callable[..., Any] = invoke_task(*args, **kwargs)
    return made
