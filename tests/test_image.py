"""The worker image as `docker build` makes it, without a container engine.

The Dockerfile copies a chosen list of files (never `COPY . .`: wallet keys must not enter a layer) and
runs `pip install .` on them. These tests read its COPY instructions, lay exactly those sources out as
the image's /app, build the wheel from them, install it away from this checkout and run the command it
installs. A package pyproject lists but the Dockerfile does not copy fails here, as it fails the build.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = ROOT / "pyproject.toml"
# What .dockerignore keeps out of the build context, whatever a COPY names.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, backslash continuations joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    result = []
    for line in logical:
        keyword, _, rest = line.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def copies(text: str) -> list[tuple[list[str], str]]:
    """Each COPY/ADD as (sources, destination); shell form or JSON form, --flags dropped."""
    found = []
    for keyword, rest in instructions(text):
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
        words = [w for w in words if not w.startswith("--")]
        found.append((words[:-1], words[-1]))
    return found


def copied_sources(text: str) -> set[str]:
    """Every source path a COPY names, normalized (`./x/` -> `x`; the context itself -> `.`)."""
    return {os.path.normpath(source) for sources, _ in copies(text) for source in sources}


def pyproject_packages() -> list[str]:
    with PYPROJECT.open("rb") as f:
        return list(tomllib.load(f)["tool"]["setuptools"]["packages"])


def wheel_sources() -> set[str]:
    """What `pip install .` builds the wheel from: pyproject.toml, its readme, every listed package."""
    with PYPROJECT.open("rb") as f:
        readme = tomllib.load(f)["project"]["readme"]
    return {"pyproject.toml", readme, *(package.split(".")[0] for package in pyproject_packages())}  # a subpackage comes in its package's directory


def missing_from(text: str) -> set[str]:
    return wheel_sources() - copied_sources(text)


def test_every_package_pyproject_lists_is_copied() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert not missing_from(text), f"the Dockerfile does not COPY {sorted(missing_from(text))}: `pip install .` fails"


def test_a_package_without_a_copy_line_is_reported() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    without_chaos = "\n".join(line for line in text.splitlines() if not re.match(r"\s*COPY\s+chaos/", line))
    assert without_chaos != text
    assert missing_from(without_chaos) == {"chaos"}
    # Continuations and the JSON form are read too.
    assert copied_sources('COPY ["bench/", "bench/"]\nCOPY --chown=1:1 chaos/ \\\n  chaos/\n') == {"bench", "chaos"}


def test_only_the_wheel_sources_enter_the_image() -> None:
    """Never the whole context: it may hold .venv/, .data/ and secrets/wallets/ (wallet keys)."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    beyond = copied_sources(text) - wheel_sources()
    assert not beyond, f"COPY of {sorted(beyond)}, beyond what the wheel is built from"
    assert not any(keyword == "ADD" for keyword, _ in instructions(text))
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"secrets", ".venv", ".data"} <= set(ignored)


def _lay_out_context(text: str, app: Path) -> None:
    """What the COPY lines put under WORKDIR (/app), from this checkout as the build context."""
    for sources, destination in copies(text):
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            target = app / destination
            if origin.is_dir():  # a directory's contents go to the destination
                shutil.copytree(origin, target, ignore=IGNORED, dirs_exist_ok=True)
            elif destination.endswith("/") or len(sources) > 1:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)


def _can_build_offline() -> bool:
    """The running interpreter's setuptools builds wheels itself (>= 70.1, or with `wheel`) and meets
    pyproject's build requirement: then no index is needed. Otherwise pip fetches the build backend,
    as `docker build` does."""
    import setuptools

    version = tuple(int(part) for part in re.findall(r"\d+", setuptools.__version__)[:2])
    return version >= (68, 0) and (version >= (70, 1) or importlib.util.find_spec("wheel") is not None)


PIP = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]


def _build_wheel(app: Path, dist: Path, cwd: Path) -> subprocess.CompletedProcess:
    offline = ["--no-build-isolation", "--no-index"] if _can_build_offline() else []
    return subprocess.run([*PIP, "wheel", "--no-deps", *offline, "-w", str(dist), str(app)], cwd=cwd, check=False, capture_output=True, text=True, timeout=120)


def test_the_wheel_built_from_the_copied_files_installs_a_working_command(tmp_path: Path) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^RUN pip install \. ", text, re.MULTILINE), "the image installs the copied tree with `pip install .`"
    app, dist, site, elsewhere = (tmp_path / name for name in ("app", "dist", "site", "elsewhere"))
    _lay_out_context(text, app)
    elsewhere.mkdir()

    built = _build_wheel(app, dist, elsewhere)
    assert built.returncode == 0, f"wheel build failed:\n{built.stdout[-2000:]}\n{built.stderr[-4000:]}"
    (wheel,) = dist.glob("hft_executor-*.whl")
    installed = subprocess.run([*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=False, capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr[-4000:]
    for package in pyproject_packages():
        assert (site / package.replace(".", "/") / "__init__.py").is_file(), f"{package} is not in the wheel"
    entry_points = next(site.glob("hft_executor-*.dist-info")).joinpath("entry_points.txt").read_text()
    assert re.search(r"^hft-executor = worker\.cli:main$", entry_points, re.MULTILINE)

    # The installed copy, not this checkout: cwd is elsewhere and only the target is on PYTHONPATH.
    script = (
        "import sys, bench, chaos, worker\n"
        f"for module in (bench, chaos, worker): assert module.__file__.startswith({str(site)!r}), module.__file__\n"
        "from worker.cli import main\n"
        "sys.exit(main(['--help']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    ran = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, check=False, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert ran.stdout.startswith("usage: hft-executor")
    for command in ("dev", "worker", "bench", "chaos", "localnet", "send-plan", "halt", "resume", "status"):
        assert re.search(rf"\b{re.escape(command)}\b", ran.stdout), f"`{command}` is not listed:\n{ran.stdout}"


def test_the_build_fails_without_a_package(tmp_path: Path) -> None:
    """The stand-in catches what it stands in for: setuptools refuses a listed package that is absent."""
    text = "\n".join(line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.startswith("COPY chaos/"))
    _lay_out_context(text, tmp_path / "app")
    built = _build_wheel(tmp_path / "app", tmp_path / "dist", tmp_path)
    assert built.returncode != 0 and "chaos" in built.stdout + built.stderr, built.stdout + built.stderr
