"""The Dockerfile, .dockerignore, deploy/compose.yaml and deploy/'s YAML: linted and cross-checked.

No container engine runs here, so this proves what can be proved without one: hadolint on the
Dockerfile, shellcheck on the scripts it runs, the Compose file against the Compose
specification's schema, yamllint on every YAML file of deploy/, and that the files agree with
each other (ports, mounted paths, the build context). tests/deploy/test_image_recipe.py runs the
image's install and entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_GPU = ROOT / "deploy" / "compose.gpu.yaml"
RECIPE = ROOT / "deploy" / "docker"
TOOL_TIMEOUT = 120.0


def dev_tool(name: str) -> str:
    """A command-line tool of the dev extra, installed beside this Python."""
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} not found beside {sys.executable}: pip install -e '.[dev]'")
    return path


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, capture_output=True, text=True, timeout=TOOL_TIMEOUT, cwd=ROOT, check=False
    )


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword and the rest, continuation lines joined."""

    keyword: str
    arguments: str


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[Instruction]]:
    """The instructions of each stage, by stage name (``FROM ... AS name``)."""
    stages: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    pending = ""
    for line in path.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") or (not text and not pending):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, arguments = (pending + text).partition(" ")
        pending = ""
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            match = re.fullmatch(r"\S+ AS (\S+)", instruction.arguments, re.IGNORECASE)
            assert match, f"every stage is named: FROM {instruction.arguments}"
            current = stages.setdefault(match.group(1), [])
        if current is not None:
            current.append(instruction)
    return stages


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def env_of(stage: list[Instruction]) -> dict[str, str]:
    """The variables that ENV instructions set, values as written ($PATH unexpanded)."""
    env = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in shlex.split(instruction.arguments):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON array of an ENTRYPOINT, CMD or HEALTHCHECK ... CMD instruction."""
    text = instruction.arguments
    if instruction.keyword == "HEALTHCHECK":
        text = text.split(" CMD ", 1)[1]
    words = json.loads(text)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), text
    return words


@dataclass(frozen=True)
class Run:
    """A RUN instruction: its bind mounts ``{target: (stage or "", source)}`` and command."""

    mounts: dict[str, tuple[str, str]]
    command: list[str]


def run_instructions(stage: list[Instruction]) -> list[Run]:
    runs = []
    for instruction in stage:
        if instruction.keyword != "RUN":
            continue
        words = shlex.split(instruction.arguments)
        mounts = {}
        while words and words[0].startswith("--mount="):
            fields = dict(f.split("=", 1) for f in words.pop(0).removeprefix("--mount=").split(","))
            assert fields["type"] == "bind", fields
            mounts[fields["target"]] = (fields.get("from", ""), fields["source"])
        runs.append(Run(mounts, words))
    return runs


def script_call(stage: list[Instruction], script: str) -> tuple[Run, list[str]]:
    """The RUN that calls deploy/docker/``script``, and that call: ``[path, args...]``.

    The call is the ``sh PATH ARGS`` between ``&&``s, without leading VAR=value assignments.
    """
    for run in run_instructions(stage):
        segments: list[list[str]] = [[]]
        for word in run.command:
            if word == "&&":
                segments.append([])
            else:
                segments[-1].append(word)
        for segment in segments:
            while segment and re.fullmatch(r"[A-Z_]+=\S*", segment[0]):
                segment.pop(0)
            if len(segment) >= 2 and segment[0] == "sh" and segment[1].endswith("/" + script):
                return run, segment[1:]
    pytest.fail(f"no RUN calls {script}")


# The Dockerfile.


def test_hadolint_passes_on_the_dockerfile():
    result = run_tool(dev_tool("hadolint"), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_shellcheck_passes_on_the_image_scripts():
    scripts = sorted(RECIPE.glob("*.sh"))
    assert {s.name for s in scripts} == {"build-wheel.sh", "install.sh"}
    result = run_tool(dev_tool("shellcheck"), "--shell=sh", *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_in_two_stages_and_runs_the_recipe_scripts():
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime"]

    build_run, build_call = script_call(stages["build"], "build-wheel.sh")
    assert build_run.mounts[build_call[0].rsplit("/", 1)[0]] == ("", "deploy/docker")
    assert build_call[1:] == [only(stages["build"], "WORKDIR").arguments, "/dist"]

    runtime_run, install_call = script_call(stages["runtime"], "install.sh")
    assert runtime_run.mounts["/dist"] == ("build", "/dist")
    assert runtime_run.mounts[install_call[0].rsplit("/", 1)[0]] == ("", "deploy/docker")
    assert install_call[1:] == ["/dist", "/opt/flatscope", "${VARIANT}"]
    assert re.search(r"^ARG VARIANT=gpu$", DOCKERFILE.read_text(), re.MULTILINE)


def test_runtime_stage_runs_as_non_root_and_serves_on_all_addresses():
    runtime = dockerfile_stages()["runtime"]
    assert only(runtime, "USER").arguments == "10001:10001"
    env = env_of(runtime)
    assert env["PATH"].split(":")[0] == "/opt/flatscope/bin"
    assert env["FLATSCOPE_HOST"] == "0.0.0.0"
    ports = {env["FLATSCOPE_PORT"], env["FLATSCOPE_HTTP_PORT"], env["FLATSCOPE_METRICS_PORT"]}
    assert ports == {"8500", "8501", "8502"}
    assert set(only(runtime, "EXPOSE").arguments.split()) == ports

    assert exec_form(only(runtime, "ENTRYPOINT")) == ["flatscope", "serve"]
    assert exec_form(only(runtime, "CMD")) == ["--host", "0.0.0.0"]
    check = exec_form(only(runtime, "HEALTHCHECK"))
    assert check[:2] == ["sh", "-c"]
    assert check[2].startswith("flatscope health --target 127.0.0.1:${FLATSCOPE_PORT} ")


def test_dockerignore_lets_in_exactly_what_the_dockerfile_uses():
    stages = dockerfile_stages()
    used = set()
    for stage in stages.values():
        for instruction in stage:
            if instruction.keyword == "COPY" and "--from" not in instruction.arguments:
                used.update(shlex.split(instruction.arguments)[:-1])
        for run in run_instructions(stage):
            used.update(source for image, source in run.mounts.values() if not image)
    used = {path.rstrip("/") for path in used}

    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the context is an allowlist: everything out, then what is needed"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert allowed == used
    for path in used:
        assert (ROOT / path).exists(), path


# deploy/compose.yaml.


def test_compose_files_follow_the_compose_specification():
    result = run_tool(
        dev_tool("check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(COMPOSE),
        str(COMPOSE_GPU),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_compose_file_builds_the_gpu_image_with_the_hosts_gpus():
    cpu = yaml.safe_load(COMPOSE.read_text())["services"]["flatscope"]
    gpu = yaml.safe_load(COMPOSE_GPU.read_text())["services"]["flatscope"]
    assert (cpu["build"]["args"]["VARIANT"], gpu["build"]["args"]["VARIANT"]) == ("cpu", "gpu")
    assert cpu["image"].endswith("-cpu")
    assert gpu["image"] == cpu["image"].removesuffix("-cpu") + "-gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}


def test_compose_schema_check_rejects_an_unknown_key(tmp_path: Path):
    """The check above can fail: a misspelled service key is an error."""
    compose = yaml.safe_load(COMPOSE.read_text())
    compose["services"]["flatscope"]["helthcheck"] = {"disable": True}
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(compose))
    result = run_tool(
        dev_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)
    )
    assert result.returncode != 0
    assert "helthcheck" in result.stdout + result.stderr


def test_compose_stack_wires_the_committed_configuration():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"flatscope", "prometheus", "grafana"}
    flatscope = services["flatscope"]
    assert (COMPOSE.parent / flatscope["build"]["context"] / "Dockerfile").resolve() == DOCKERFILE
    assert flatscope["read_only"] is True
    assert flatscope["cap_drop"] == ["ALL"]

    # Prometheus and Grafana share flatscope's network namespace: the committed configuration
    # addresses each other on 127.0.0.1 and works unchanged.
    for name in ("prometheus", "grafana"):
        assert services[name]["network_mode"] == "service:flatscope"
        assert "ports" not in services[name]
    published = {int(port.split(":")[-1]) for port in flatscope["ports"]}
    assert published == {8500, 8501, 8502, 9090, 3000}
    scrape = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = scrape["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["127.0.0.1:8502"]
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasources["datasources"][0]["url"] == "http://127.0.0.1:9090"

    mounts = {}
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source, target, *_ = volume.split(":")
            if source.startswith("."):
                assert (COMPOSE.parent / source).is_dir(), volume
                mounts[target] = (COMPOSE.parent / source).resolve()
    assert mounts["/etc/prometheus"] == ROOT / "deploy/prometheus"
    assert mounts["/etc/grafana/provisioning"] == ROOT / "deploy/grafana/provisioning"
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/flatscope.yaml").read_text()
    )
    dashboards = provider["providers"][0]["options"]["path"]
    assert mounts[dashboards] == ROOT / "deploy/grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[dashboards] / Path(home).relative_to(dashboards)).is_file()


# YAML.


def test_yamllint_passes_on_deploy():
    config = ROOT / ".yamllint.yaml"
    result = run_tool(
        sys.executable, "-m", "yamllint", "--strict", "-c", str(config), "deploy", str(config)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    linted = list((ROOT / "deploy").rglob("*.yaml")) + list((ROOT / "deploy").rglob("*.yml"))
    assert len(linted) >= 15, linted
