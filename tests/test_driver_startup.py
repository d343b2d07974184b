"""The driver's lean start-up: its own JSON and command-line parsing, and what it imports.

Under QEMU's TCG every module python executes at start-up costs boot time (docs/qemu.md),
so the driver avoids json, argparse, re and typing. These tests hold it to that, and hold
the replacements to the behaviour of the modules they replace.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from netvm_driver import jsonio
from netvm_driver.__main__ import OPTIONS, DriverArgs, parse_args
from netvm_driver.cli import UsageError, help_text, parse

from tests.harness import DRIVER_DIR, DRIVER_JSON, run_driver

# ---------------------------------------------------------------------------- jsonio


@pytest.mark.parametrize(
    "text",
    [
        DRIVER_JSON.read_text(),
        '  {"a": [1, -2.5e3, true, false, null, "\\u00e9\\n"], "b": {}}\n',
        "[]",
        '"x"',
        "0",
        '{"nested": [[[{"k": [0]}]]]}',
    ],
)
def test_loads_agrees_with_json(text: str) -> None:
    assert jsonio.loads(text) == json.loads(text)


@pytest.mark.parametrize(
    ("text", "msg", "pos"),
    [
        ("", "Expecting value", 0),
        ("   ", "Expecting value", 3),
        ('{"a": 1} x', "Extra data", 9),
        ('{"a": 1,}', "Expecting property name enclosed in double quotes", 8),
        ('{\n  "a": [1, 2\n}', "Expecting ',' delimiter", 15),
        ('"tab\tinside"', "Invalid control character at", 4),
    ],
)
def test_loads_errors_are_json_decode_errors_with_a_position(text: str, msg: str, pos: int) -> None:
    with pytest.raises(json.JSONDecodeError) as err:
        jsonio.loads(text)
    assert err.value.msg == msg and err.value.pos == pos
    with pytest.raises(json.JSONDecodeError) as ref:
        json.loads(text)
    assert (ref.value.msg, ref.value.lineno, ref.value.colno) == (
        err.value.msg,
        err.value.lineno,
        err.value.colno,
    )


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_loads_rejects_non_finite_constants(constant: str) -> None:
    with pytest.raises(ValueError, match="not a JSON value"):
        jsonio.loads(f'{{"x": {constant}}}')


def test_dumps_round_trips_sorted_on_one_line() -> None:
    doc = {"seq": 3, "reason": 'SIG"USR1\u00e9', "uptime_s": 1.25, "counters": {"b": 2, "a": 1}}
    text = jsonio.dumps(doc)
    assert "\n" not in text and json.loads(text) == doc
    assert text == json.dumps(doc, sort_keys=True)
    with pytest.raises(ValueError):
        jsonio.dumps({"x": math.nan})
    with pytest.raises(TypeError, match="not JSON serializable"):
        jsonio.dumps({"x": object()})
    looped: list[object] = []
    looped.append(looped)
    with pytest.raises(ValueError, match=r"[Cc]ircular"):
        jsonio.dumps(looped)


def test_a_bad_config_file_names_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "driver.json"
    bad.write_text('{\n  "interface": "eth0",\n  "uio": {,\n}\n')
    proc = run_driver("--config", str(bad), "--self-check")
    assert proc.returncode == 2
    assert f"{bad}:3:11: invalid JSON: Expecting property name" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- cli


def test_defaults_and_both_value_spellings() -> None:
    args = parse_args([])
    assert args.config == "/etc/netvm/driver.json" and args.interface is None
    assert args.rx_mode == "auto" and args.tx_mode == "ring" and args.batch > 0
    assert args.fill_tx_checksums is False and args.self_check is False
    args = parse_args(
        ["--batch=7", "--interface", "eth1", "--stats-interval", "0.5", "--keep-offloads"]
    )
    assert (args.batch, args.interface, args.stats_interval, args.keep_offloads) == (
        7,
        "eth1",
        0.5,
        True,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batch", "x"], "argument --batch: invalid int value: 'x'"),
        (["--rx-mode", "fast"], "argument --rx-mode: invalid choice: 'fast'"),
        (["--config"], "argument --config: expected one argument"),
        (["--config", "--batch", "3"], "argument --config: expected one argument"),
        (["--keep-offloads=yes"], "argument --keep-offloads: ignored explicit argument 'yes'"),
        (["--conf", "x"], "unrecognized argument: --conf (did you mean --config?)"),
        (["eth0"], "unrecognized argument: eth0"),
    ],
)
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse(OPTIONS, argv, DriverArgs)
    assert str(err.value).startswith(message)


def test_usage_errors_exit_2_like_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--batch", "0"], ["--rx-ring-block-kib", "6"], ["--tx-mode", "x"]):
        with pytest.raises(SystemExit) as exc:
            parse_args(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: netvm_driver [options]\nnetvm_driver: error: ")


def test_help_lists_every_option_with_its_default() -> None:
    text = help_text("netvm_driver", "About.", OPTIONS)
    for opt in OPTIONS:
        assert f"  {opt.name}" in text
    assert "--rx-mode {auto,ring,socket}" in text
    assert "(default: /etc/netvm/driver.json)" in text and "%(default)s" not in text
    assert max(len(line) for line in text.splitlines()) <= 78


# ---------------------------------------------------------------------------- imports


def test_start_up_imports_none_of_the_slow_modules() -> None:
    # What `python3 -S -m netvm_driver` loads before its first log line: everything the
    # driver's modules import at the top, which is the whole package.
    probe = (
        "import sys; import netvm_driver.__main__, netvm_driver.pl011; "
        "print(' '.join(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        capture_output=True,
        text=True,
        cwd=DRIVER_DIR,
        timeout=30,
        check=True,
    )
    loaded = set(proc.stdout.split())
    slow = {
        "argparse",
        "json",
        "re",
        "typing",
        "gettext",
        "dataclasses",
        "enum",
        "socket",
        "signal",
    }
    assert not loaded & slow, sorted(loaded & slow)


# ---------------------------------------------------------------------------- records


def test_record_behaves_like_a_named_tuple() -> None:
    import copy
    import pickle

    from netvm_driver.config import UioSpec

    spec = UioSpec("rx_free", 0x1000, 0x3000, capacity=512)
    assert spec == ("rx_free", 0x1000, 0x3000, 512, None) and isinstance(spec, tuple)
    assert (spec.name, spec.capacity, spec.irq) == ("rx_free", 512, None)
    assert repr(spec) == "UioSpec(name='rx_free', paddr=4096, size=12288, capacity=512, irq=None)"
    assert copy.deepcopy(spec) == spec and pickle.loads(pickle.dumps(spec)) == spec
    assert UioSpec._fields == ("name", "paddr", "size", "capacity", "irq")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    for bad in (
        lambda: UioSpec("x"),
        lambda: UioSpec("x", 1, 2, nope=1),
        lambda: UioSpec(*"abcdef"),
    ):
        with pytest.raises(TypeError):
            bad()


def test_record_rejects_a_field_without_default_after_one_with() -> None:
    from netvm_driver.records import Record

    with pytest.raises(TypeError, match="follows one with a default"):

        class Bad(Record):
            a: int = 1
            b: int
