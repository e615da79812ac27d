"""README.md's commands run, so the guide cannot rot.

A fenced block directly after an ``<!-- runnable -->`` line (invisible on GitHub) is run by this
test: each command of a shell block (``\\`` continuations joined, ``#`` comments kept for bash) and
a ``python`` block as one script. ``<!-- runnable file=NAME -->`` marks a block that is the content
of the file ``NAME`` the commands use (the ``pairs.csv`` example). Everything runs, in README order,
in one throwaway copy of the project (tests/dvc_project.py: git + DVC, its DAG recorded as run)
with tiny settings: the model is a tiny random pipeline folder, registered as
``models:/xmdpt@champion`` in the copy's own MLflow database; ``person.jpg`` / ``other_person.jpg``
are scikit-image's astronaut, ``pose.json`` a valid pose. A command runs as written, except
``dvc exp run``, which reproduces the experiment up to its first stage (`config`: the whole DAG
takes 13 minutes; the params it sets must land in the resolved configs). Each command must exit 0
and, where cheap, leave the output it promises. A command without a runner below fails the test:
mark as runnable only what runs offline in seconds.

Also: every ``xmdpt <subcommand>`` named in README.md exists, and every project path it names exists.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml
from dvc_project import REPO, VENV_BIN, copy_project, project_env, record_dag

pytestmark = pytest.mark.timeout(600)

README = REPO / "README.md"
MARKER = re.compile(r"<!--\s*runnable(?:\s+file=(?P<file>\S+))?\s*-->")
SHELL = ("", "sh", "bash", "shell", "console")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    file: Optional[str]  # the file this block is the content of, for `runnable file=NAME`


@dataclass(frozen=True)
class Command:
    line: int
    text: str  # a shell command line, or a python script
    python: bool = False

    @property
    def id(self) -> str:
        first = self.text.strip().splitlines()[0] if self.python else self.text
        return f"L{self.line}: {first[:70]}"


def runnable_blocks(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = MARKER.fullmatch(line.strip())
        if not m:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"README.md:{i + 1}: a runnable marker must be directly followed by a ``` fence")
        end = next((k for k in range(i + 2, len(lines)) if lines[k].startswith("```")), None)
        if end is None:
            raise ValueError(f"README.md:{i + 2}: unclosed fence")
        blocks.append(Block(i + 2, lines[i + 1][3:].strip(), "\n".join(lines[i + 2:end]) + "\n", m.group("file")))
    return blocks


def commands(block: Block) -> list[Command]:
    if block.lang == "python":
        return [Command(block.line, block.text, python=True)]
    if block.lang not in SHELL:
        raise ValueError(f"README.md:{block.line}: runnable block in {block.lang!r}; expected a shell or python block")
    out, parts, start = [], [], 0
    for n, line in enumerate(block.text.splitlines(), start=block.line + 1):
        if not parts:
            start = n
        text = line.strip()
        if text.endswith("\\"):
            parts.append(text[:-1].strip())
            continue
        full = " ".join(p for p in [*parts, text] if p)
        parts = []
        if full and not full.startswith("#"):
            out.append(Command(start, full))
    return out


BLOCKS = runnable_blocks(README.read_text())
COMMANDS = [c for b in BLOCKS if b.file is None for c in commands(b)]
FILES = {b.file: b.text for b in BLOCKS if b.file is not None}


# ---- runners: how each known command runs here and what it must leave ----------------------------

def _argv(cmd: Command) -> list[str]:
    return shlex.split(cmd.text, comments=True)


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _is_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 0, path


def _after_generate(root: Path, argv: list[str], out: str) -> None:
    _is_png(root / _option(argv, "--out"))


def _after_generate_batch(root: Path, argv: list[str], out: str) -> None:
    summary = json.loads((root / _option(argv, "--out") / "summary.json").read_text())
    assert summary["rows"] >= 1 and summary["generated"] + summary["skipped"] == summary["rows"], summary
    assert summary["quarantined"] == 0, summary


def _after_check(root: Path, argv: list[str], out: str) -> None:
    assert " 0 not ready" in out, out


def _exp_run(argv: list[str]) -> list[str]:
    return [*argv, "config"]  # the experiment up to its first stage: the resolved configs


def _after_exp_run(root: Path, argv: list[str], out: str) -> None:
    from xmdpt.core.stage_config import STAGE_SECTIONS

    sets = [argv[i + 1] for i, a in enumerate(argv) if a in ("-S", "--set-param")]
    assert sets, argv
    for s in sets:
        key, value = s.lstrip("+").split("=", 1)
        section, name = key.split(".", 1)
        readers = [st for st, secs in STAGE_SECTIONS.items() if section in secs]
        assert readers, key
        for stage in readers:
            resolved = yaml.safe_load((root / "artifacts" / "config" / f"{stage}.yaml").read_text())
            assert resolved[section][name] == yaml.safe_load(value), (stage, key, resolved[section][name])


def _after_exp_show(root: Path, argv: list[str], out: str) -> None:
    assert "Experiment" in out, out


def _after_plots_show(root: Path, argv: list[str], out: str) -> None:
    if "--json" in argv:
        json.loads(out)


@dataclass(frozen=True)
class Runner:
    prefix: tuple[str, ...]
    check: Optional[Callable[[Path, list[str], str], None]] = None
    adapt: Optional[Callable[[list[str]], list[str]]] = None


RUNNERS = [
    Runner(("xmdpt", "generate-batch"), _after_generate_batch),
    Runner(("xmdpt", "generate"), _after_generate),
    Runner(("xmdpt", "check"), _after_check),
    Runner(("dvc", "exp", "run"), _after_exp_run, _exp_run),
    Runner(("dvc", "exp", "show"), _after_exp_show),
    Runner(("dvc", "metrics", "show")),
    Runner(("dvc", "plots", "show"), _after_plots_show),
    Runner(("dvc", "params", "diff")),
    Runner(("dvc", "status")),
    Runner(("dvc", "dag")),
]


def runner_for(cmd: Command) -> Optional[Runner]:
    if cmd.python:
        return None
    argv = _argv(cmd)
    found = [r for r in RUNNERS if tuple(argv[:len(r.prefix)]) == r.prefix]
    return max(found, key=lambda r: len(r.prefix)) if found else None


# ---- the throwaway project -------------------------------------------------------------------

def _write_inputs(root: Path) -> None:
    """The user's files the commands name: photos, a pose, a model folder, and what pairs.csv lists."""
    from PIL import Image
    from skimage import data as skdata

    from xmdpt.sampling.inputs import EXAMPLE_POSE

    from tiny_pipeline_folder import build_tiny_pipeline_folder

    photo = Image.fromarray(skdata.astronaut()).convert("RGB")  # a person MediaPipe finds
    for name in ("person.jpg", "other_person.jpg", "people/anna.jpg", "people/ben.jpg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        photo.save(root / name)
    for name in ("pose.json", "poses/walk.json"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(EXAMPLE_POSE))
    folder = build_tiny_pipeline_folder(root / "build")
    shutil.copytree(folder, root / "path" / "to" / "model_folder")
    for name, text in FILES.items():
        (root / name).write_text(text)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> tuple[Path, dict]:
    root = copy_project(tmp_path_factory.mktemp("readme") / "project", models=True)
    record_dag(root)
    _write_inputs(root)
    env = project_env(MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db", XMDPT_CACHE_DIR=str(root / "cache"))
    register = ("from xmdpt.registry.register import register_pipeline_folder; "
                "register_pipeline_folder('path/to/model_folder', 'xmdpt', alias='champion')")
    res = subprocess.run([str(VENV_BIN / "python"), "-c", register], cwd=root, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return root, env


# ---- the tests -------------------------------------------------------------------------------

def test_readme_marks_runnable_blocks():
    assert any(c.python for c in COMMANDS) and len(COMMANDS) >= 5, COMMANDS
    assert "pairs.csv" in FILES
    with pytest.raises(ValueError, match="directly followed"):
        runnable_blocks("<!-- runnable -->\n\n```\nls\n```\n")
    text = "<!-- runnable -->\n```\nxmdpt generate --model m \\\n    --out o.png  # note\n# a comment\n```\n"
    assert [c.text for c in commands(runnable_blocks(text)[0])] == ["xmdpt generate --model m --out o.png  # note"]


def test_every_runnable_command_has_a_runner():
    unknown = [c.id for c in COMMANDS if not c.python and runner_for(c) is None]
    assert not unknown, f"README.md marks commands runnable that this test cannot run: {unknown}"


@pytest.mark.slow  # a minute or two for all of them: Ray, MLflow, DVC and torch start-ups
@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.id for c in COMMANDS])
def test_readme_command_runs(cmd: Command, sandbox):
    root, env = sandbox
    if cmd.python:
        res = subprocess.run([str(VENV_BIN / "python"), "-"], input=cmd.text, cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"README.md:{cmd.line}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        for saved in re.findall(r"\.save\(\s*[\"']([^\"']+)[\"']", cmd.text):
            _is_png(root / saved)
        return
    runner = runner_for(cmd)
    assert runner is not None, f"README.md:{cmd.line}: no runner for {cmd.text!r}"
    argv = _argv(cmd)
    run_argv = runner.adapt(argv) if runner.adapt else argv
    res = subprocess.run(run_argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"README.md:{cmd.line}: {shlex.join(run_argv)}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    if runner.check:
        runner.check(root, argv, res.stdout)


def test_every_xmdpt_subcommand_named_in_readme_exists():
    import typer

    from xmdpt.cli import app

    known = set(typer.main.get_command(app).commands)
    named = set(re.findall(r"(?:^|[\s`(])xmdpt ([a-z][a-z-]*)", README.read_text(), flags=re.M))
    assert named, "no xmdpt subcommand found in README.md"
    assert named <= known, f"README.md names xmdpt subcommands the CLI does not have: {sorted(named - known)}"


def _tracked_top_level() -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {line.split("/")[0] for line in out.splitlines()}


def test_every_project_path_named_in_readme_exists():
    """A token whose first part is a tracked top-level file or folder (``xmdpt/core/config.py``,
    ``docs/cluster.md``, ``BENCHMARKS.md``, an image link) must exist; placeholders (``<stage>``,
    ``{storage_root}``, ``…``) and outputs the DAG writes (``artifacts/``, ``data/``) are not paths here."""
    top = _tracked_top_level()
    text = README.read_text()
    tokens = set(re.findall(r"\]\(([^)\s]+)\)", text))  # link and image targets
    tokens |= {t.strip("`'\"()[],.:;") for t in re.split(r"[\s`]+", text)}
    named = sorted(t for t in tokens if t and t.split("/")[0] in top and not re.search(r"[<>{}…*$]", t)
                   and "://" not in t)
    assert "xmdpt/core/config.py" in named and "docs/images/embedded_grid.png" in named, named
    missing = [t for t in named if not (REPO / t).exists()]
    assert not missing, f"README.md names paths that do not exist: {missing}"
