"""Static checks of docker/: the compose file, the image and the KubeRay manifest (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")


class _ComposeLoader(yaml.SafeLoader):
    """Safe loader that also accepts Compose's `!reset` / `!override` tags."""


_ComposeLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load(name: str) -> dict:
    return yaml.load((DOCKER / name).read_text(), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load("compose.yaml")


def _command(service: dict) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def test_services_and_start_order(compose):
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "ray-head", "ray-worker", "sweep"} <= set(services)
    for name in ("postgres", "minio", "mlflow", "ray-head"):
        assert "healthcheck" in services[name], name
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["sweep"]["profiles"] == ["sweep"]
    assert services["sweep"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_only_loopback_is_published(compose):
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_no_secret_values_in_compose(compose):
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert str(value).startswith("${"), f"{name}.{key} must come from .env, not be written here"
    mlflow_cmd = " ".join(_command(compose["services"]["mlflow"]))
    assert re.search(r"postgresql\+psycopg2://\$\{POSTGRES_USER[^}]*\}@postgres", mlflow_cmd), "no password in the URI"


def test_commands_use_flags_that_exist(compose):
    from mlflow.cli import server
    from ray.scripts.scripts import start

    def flags(cmd: list[str]) -> set[str]:
        return {part for part in cmd if part.startswith("--")}

    mlflow_opts = {opt for param in server.params for opt in param.opts}
    mlflow_cmd = _command(compose["services"]["mlflow"])
    assert {"--allowed-hosts", "--serve-artifacts", "--artifacts-destination"} <= flags(mlflow_cmd)
    assert flags(mlflow_cmd) <= mlflow_opts
    ray_opts = {opt for param in start.params for opt in param.opts}
    for name in ("ray-head", "ray-worker"):
        assert flags(_command(compose["services"][name])) <= ray_opts, name

    from studies.sweep import build_parser

    sweep_opts = set(build_parser()._option_string_actions)
    entrypoint = compose["services"]["sweep"]["entrypoint"]
    assert entrypoint[:2] == ["python", "studies/sweep.py"]
    assert {"--ray-address", "--tracking-uri", "--storage-path"} <= flags(entrypoint) <= sweep_opts


def test_env_example_defines_every_variable_with_placeholders():
    text = (DOCKER / ".env.example").read_text()
    defined = dict(re.findall(r"^#?\s*([A-Z0-9_]+)=(.*)$", text, flags=re.M))
    used = set()
    for name in ("compose.yaml", "compose.cpu.yaml"):
        used |= set(re.findall(r"\$\{([A-Z0-9_]+)", (DOCKER / name).read_text()))
    assert used <= set(defined), f"not in .env.example: {sorted(used - set(defined))}"
    for key, value in defined.items():
        if SECRET_NAME.search(key) and key != "S3_ACCESS_KEY":
            assert "CHANGE_ME" in value, f"{key} in .env.example must be a placeholder"


def test_image_is_multistage_non_root_and_secret_free():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, flags=re.M)) >= 2
    assert re.search(r"^ARG BASE=", dockerfile, flags=re.M)
    user = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert user and user[-1] not in ("root", "0")
    for line in re.findall(r"^(?:ENV|ARG) .*$", dockerfile, flags=re.M):
        assert not SECRET_NAME.search(line), line
    ignore = (DOCKER.parent / ".dockerignore").read_text().splitlines()
    assert "**" in ignore, "the build context is an allow-list"
    assert not any(".env" in line and line.startswith("!") for line in ignore)


def test_kuberay_rayjob_manifest():
    job = _load("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert "--ray-address auto" in job["spec"]["entrypoint"]
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")
@pytest.mark.parametrize("files", [["compose.yaml"], ["compose.yaml", "compose.cpu.yaml"]])
def test_docker_compose_config_validates(files):
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker compose plugin not installed")
    args = [arg for name in files for arg in ("-f", name)]
    result = subprocess.run(
        ["docker", "compose", "--env-file", ".env.example", *args, "--profile", "sweep", "config", "--quiet"],
        cwd=DOCKER,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def _env_example() -> dict[str, str]:
    return dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", (DOCKER / ".env.example").read_text(), flags=re.M))


def _script(service: dict) -> str:
    return service["command"][0].replace("$$", "$")  # compose's `$$` is the shell's `$`


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX shell")
def test_start_up_refuses_the_example_credentials(compose):
    services = compose["services"]
    for name in ("postgres", "minio"):  # everything else starts after these
        assert services[name]["depends_on"]["check-env"]["condition"] == "service_completed_successfully", name
    script = _script(services["check-env"])
    example = _env_example()
    refused = subprocess.run(["sh", "-c", script], env=example, capture_output=True, text=True)
    assert refused.returncode != 0 and "POSTGRES_PASSWORD is still the example value" in refused.stderr
    secrets = {k: v for k, v in example.items() if SECRET_NAME.search(k) or k == "MINIO_ROOT_USER"}
    assert set(secrets) <= set(services["check-env"]["environment"]), "check-env must see every secret"
    real = {k: (f"{k.lower()}-{'x' * 20}" if "CHANGE_ME" in v else v) for k, v in example.items()}
    assert subprocess.run(["sh", "-c", script], env=real, capture_output=True).returncode == 0
    short = {**real, "RAY_AUTH_TOKEN": "short"}
    result = subprocess.run(["sh", "-c", script], env=short, capture_output=True, text=True)
    assert result.returncode != 0 and "RAY_AUTH_TOKEN is shorter" in result.stderr
    same = {**real, "RAY_S3_ACCESS_KEY": real["MLFLOW_S3_ACCESS_KEY"]}
    assert subprocess.run(["sh", "-c", script], env=same, capture_output=True).returncode != 0


def test_mlflow_and_ray_get_separate_least_privilege_keys(compose, tmp_path):
    services = compose["services"]
    mlflow_env, ray_env = services["mlflow"]["environment"], services["ray-head"]["environment"]
    assert mlflow_env["AWS_ACCESS_KEY_ID"] == "${MLFLOW_S3_ACCESS_KEY}"
    assert ray_env["AWS_ACCESS_KEY_ID"].startswith("${RAY_S3_ACCESS_KEY")
    assert services["sweep"]["environment"]["AWS_ACCESS_KEY_ID"].startswith("${RAY_S3_ACCESS_KEY")
    init = _script(services["minio-init"])
    assert "readwrite" not in init, "no global read/write policy"
    # Run the policy part of minio-init with a stub `mc` and read the policies it creates.
    (tmp_path / "mc").write_text('#!/bin/sh\necho "$@" >> "$MC_LOG"\n')
    (tmp_path / "mc").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MC_LOG": str(tmp_path / "log"), "S3_BUCKET": "b"}
    env |= {"MLFLOW_S3_ACCESS_KEY": "m", "RAY_S3_ACCESS_KEY": "r"}
    env |= {"MLFLOW_S3_SECRET_KEY": "s", "RAY_S3_SECRET_KEY": "s"}
    init = init.replace("/tmp/", f"{tmp_path}/")
    assert subprocess.run(["sh", "-c", init], env=env, capture_output=True).returncode == 0
    for role in ("mlflow", "ray"):
        policy = json.loads((tmp_path / f"i3ad-{role}.json").read_text())
        writable = [r for s in policy["Statement"] if "s3:PutObject" in s["Action"] for r in s["Resource"]]
        assert writable == [f"arn:aws:s3:::b/{role}/*"], role
    log = (tmp_path / "log").read_text()
    assert "policy attach local i3ad-mlflow --user m" in log and "policy attach local i3ad-ray --user r" in log


def test_mlflow_server_requires_login_with_the_admin_password_from_env(compose):
    mlflow = compose["services"]["mlflow"]
    command = _command(mlflow)
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert mlflow["environment"]["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD")
    assert mlflow["environment"]["MLFLOW_FLASK_SERVER_SECRET_KEY"].startswith("${")
    ini = (DOCKER / "mlflow-auth.ini").read_text()
    assert "admin_password" not in ini and "admin_username = admin" in ini
    assert compose["services"]["sweep"]["environment"]["MLFLOW_TRACKING_PASSWORD"] == "${MLFLOW_ADMIN_PASSWORD}"


def test_ray_version_has_token_auth_and_the_image_has_the_dashboard():
    pyproject = (DOCKER.parent / "pyproject.toml").read_text()
    floors = re.findall(r'"ray\[([a-z,]+)\]>=([0-9.]+)"', pyproject)
    assert floors and all(tuple(map(int, v.split("."))) >= (2, 52) for _, v in floors)
    assert any("default" in extras for extras, _ in floors)
    assert "[cluster]" in (DOCKER / "Dockerfile").read_text()


def _default_image(service: dict) -> str:
    """The image a service runs when .env overrides nothing (`${VAR:-default}` -> default)."""
    image = service["image"]
    match = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", image)
    return match.group(1) if match else image


def test_third_party_images_are_pinned_to_current_releases(compose):
    images = {name: _default_image(s) for name, s in compose["services"].items() if "build" not in s}
    for name, image in images.items():
        repo, _, tag = image.rpartition(":")
        assert repo and tag not in ("", "latest") and re.search(r"\d+\.\d+|RELEASE\.", tag), f"{name}: {image}"
    # MinIO left Docker Hub; its last images (community edition is source-only since 2025-10) live on quay.io.
    assert images["minio"] == "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
    assert images["minio-init"] == images["check-env"] == "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"
    major = int(images["postgres"].split(":")[1].split(".")[0])
    assert major >= 18
    # Postgres 18 images keep data in /var/lib/postgresql/18/docker: the volume sits one level up.
    assert "pgdata:/var/lib/postgresql" in compose["services"]["postgres"]["volumes"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    ray = re.search(r"^ARG RAY_VERSION=(\S+)", dockerfile, flags=re.M).group(1)
    assert re.search(r"^ARG MLFLOW_VERSION=\d+\.\d+\.\d+$", dockerfile, flags=re.M)
    assert '"ray[default,tune]==${RAY_VERSION}"' in dockerfile and '"mlflow==${MLFLOW_VERSION}"' in dockerfile
    assert _load("kuberay-rayjob.yaml")["spec"]["rayClusterSpec"]["rayVersion"] == ray  # one Ray everywhere
