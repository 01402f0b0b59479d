"""deploy/kubernetes: every manifest parses; the SFU runs on the host network with readiness on
/readyz and liveness on /healthz, a grace period above its drain deadline; the settings the pods
get (ConfigMap TOML, Secret, downward API, ``$(VAR)`` expansion) are accepted by the real loaders."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from control.config import ControlConfig
from levelchat.config import ConfigError
from sfu.config import NodeConfig
from tests.deploy.support import (
    CONFIG_DIR,
    CONTROL_ENTRY,
    DEPLOY,
    NODE_ENTRY,
    PLACEHOLDER_SECRET,
    TEST_SECRET,
    config_file_of,
    control_config_for,
    entry_point,
    load_yaml_docs,
    node_config_for,
)

K8S = DEPLOY / "kubernetes"
#: what the downward API gives a pod on a worker
POD_FIELDS = {"status.hostIP": "10.0.0.5", "spec.nodeName": "worker-1", "metadata.namespace": "levelchat"}


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            assert isinstance(doc, dict) and "kind" in doc and "apiVersion" in doc, path
            doc["_file"] = path.name
            docs.append(doc)
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container_running(entry: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The workload and its container whose command is ``entry``."""
    found = [
        (d, c) for d in documents() if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"] if entry_point(c.get("command", ["?"])) == entry
    ]
    assert len(found) == 1, f"{entry}: {len(found)} containers"
    return found[0]


def secret_data(secret: str) -> dict[str, str]:
    data: dict[str, str] = find("Secret", "levelchat-api")["stringData"]
    return {k: v.replace(PLACEHOLDER_SECRET, secret) for k, v in data.items()}


def pod_env(container: dict[str, Any], secret: str = TEST_SECRET) -> dict[str, str]:
    """The container's environment as the kubelet builds it: ``$(VAR)`` expands only variables
    defined earlier in the list (a later or unknown one stays literally ``$(VAR)``)."""
    secrets = secret_data(secret)
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), item["value"])
        else:
            source = item["valueFrom"]
            if "secretKeyRef" in source:
                ref = source["secretKeyRef"]
                assert ref["name"] == "levelchat-api", ref
                value = secrets[ref["key"]]
            else:
                value = POD_FIELDS[source["fieldRef"]["fieldPath"]]
        assert "$(" not in value, f"{item['name']}: {value!r} refers to a variable not defined before it"
        env[item["name"]] = value
    return env


def mounted_files(workload: dict[str, Any], container: dict[str, Any], tmp: Path) -> dict[str, Path]:
    """ConfigMap volumes written out: path inside the pod -> file here."""
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    files: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        ref = volumes[mount["name"]].get("configMap")
        if ref is None:
            continue
        data = find("ConfigMap", ref["name"])["data"]
        for item in ref.get("items", [{"key": k, "path": k} for k in data]):
            if "subPath" in mount and mount["subPath"] != item["path"]:
                continue
            local = tmp / item["path"]
            local.write_text(data[item["key"]])
            # a subPath mount puts that one file at mountPath itself
            at = mount["mountPath"] if "subPath" in mount else f"{mount['mountPath'].rstrip('/')}/{item['path']}"
            files[at] = local
    return files


def sfu_config(tmp: Path, secret: str = TEST_SECRET, env: Mapping[str, str] | None = None) -> NodeConfig:
    workload, container = container_running(NODE_ENTRY)
    return node_config_for(container["command"], pod_env(container, secret) if env is None else env,
                           mounted_files(workload, container, tmp))


def control_config(tmp: Path, secret: str = TEST_SECRET) -> ControlConfig:
    workload, container = container_running(CONTROL_ENTRY)
    return control_config_for(container["command"], pod_env(container, secret), mounted_files(workload, container, tmp))


def test_every_manifest_parses_and_kustomization_lists_them() -> None:
    docs = documents()
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "DaemonSet", "StatefulSet"} <= kinds, kinds
    (kust,) = [d for d in docs if d["kind"] == "Kustomization"]
    listed = set(kust["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files, (listed, files)
    for d in docs:
        if d["kind"] not in ("Kustomization", "Namespace"):
            assert d["metadata"]["namespace"] == "levelchat", (d["_file"], d["kind"])


def test_configmap_carries_the_same_toml_as_deploy_config() -> None:
    data = find("ConfigMap", "levelchat-config")["data"]
    for name in ("sfu.toml", "control.toml", "turnserver.conf"):
        assert data[name] == (CONFIG_DIR / name).read_text(), name


def test_sfu_daemonset_on_the_host_network(tmp_path: Path) -> None:
    workload, container = container_running(NODE_ENTRY)
    pod = workload["spec"]["template"]["spec"]
    assert workload["kind"] == "DaemonSet"
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    cfg = sfu_config(tmp_path)
    assert (cfg.node_id, cfg.public_ip) == (POD_FIELDS["spec.nodeName"], (POD_FIELDS["status.hostIP"],))
    assert cfg.public_url == f"http://{POD_FIELDS['status.hostIP']}:{cfg.http_port}"
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]}
    assert ports == {(cfg.http_port, "TCP"), (cfg.ice_tcp_port, "TCP"), (cfg.media_port, "UDP")}
    assert config_file_of(container["command"]) in mounted_files(workload, container, tmp_path)


def test_coturn_daemonset_shares_the_secret_and_relays_to_the_sfu_hosts_only(tmp_path: Path) -> None:
    workload = find("DaemonSet", "levelchat-coturn")
    pod = workload["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    sfu_workload, _ = container_running(NODE_ENTRY)
    assert pod["hostNetwork"] is True
    assert pod["nodeSelector"] == sfu_workload["spec"]["template"]["spec"]["nodeSelector"]  # beside every node
    env = pod_env(container)
    args = [re.sub(r"\$\(([A-Za-z_]+)\)", lambda m: env[m.group(1)], a) for a in container["args"]]
    assert args[:2] == ["-c", "/etc/coturn/turnserver.conf"]
    flags = dict(a.removeprefix("--").partition("=")[::2] for a in args[2:])
    cfg = sfu_config(tmp_path)
    (server,) = cfg.turn_servers
    assert flags["static-auth-secret"] == server.secret == TEST_SECRET
    low, _, high = flags["allowed-peer-ip"].partition("-")
    assert ipaddress.ip_address(low) <= ipaddress.ip_address(POD_FIELDS["status.hostIP"]) <= ipaddress.ip_address(high)
    files = mounted_files(workload, container, tmp_path)
    conf = dict(line.partition("=")[::2] for line in files["/etc/coturn/turnserver.conf"].read_text().splitlines()
                if line and not line.startswith("#"))
    ports = {(p["containerPort"], p["protocol"]) for p in container["ports"]}
    tcp, tls = int(conf["listening-port"]), int(conf["tls-listening-port"])
    assert ports == {(tcp, "UDP"), (tcp, "TCP"), (tls, "TCP")}
    assert {(u.port, u.secure) for u in server.parsed_urls} == {(tcp, False), (tls, True)}
    tls_volume = next(v for v in pod["volumes"] if "secret" in v)
    tls_mount = next(m for m in container["volumeMounts"] if m["name"] == tls_volume["name"])
    paths = {f"{tls_mount['mountPath']}/{i['path']}" for i in tls_volume["secret"]["items"]}
    assert paths == {conf["cert"], conf["pkey"]}


@pytest.mark.parametrize("entry", [NODE_ENTRY, CONTROL_ENTRY])
def test_probes_and_resources(entry: str, tmp_path: Path) -> None:
    _, container = container_running(entry)
    port = sfu_config(tmp_path).http_port if entry == NODE_ENTRY else control_config(tmp_path).port
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], ready["port"]) == ("/readyz", port)
    assert (live["path"], live["port"]) == ("/healthz", port)
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_sfu_grace_period_is_above_the_drain_deadline(tmp_path: Path) -> None:
    workload, container = container_running(NODE_ENTRY)
    pod = workload["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > sfu_config(tmp_path).drain_deadline_s
    assert "lifecycle" not in container  # SIGTERM drains by itself: no preStop
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0


def test_nodes_know_every_control_plane_replica(tmp_path: Path) -> None:
    """One URL per replica (stable StatefulSet pod names under the headless Service), so that a node
    fails over between them; backends use the load-balanced Service."""
    workload, container = container_running(CONTROL_ENTRY)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert workload["kind"] == "StatefulSet"
    headless = find("Service", workload["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for service in (headless, find("Service", "levelchat-control")):
        (port,) = service["spec"]["ports"]
        assert named[port["targetPort"]] == control_config(tmp_path).port
        assert service["spec"]["selector"].items() <= labels.items()
    domain = f"{headless['metadata']['name']}.{headless['metadata']['namespace']}.svc.cluster.local"
    urls = [urlsplit(u) for u in sfu_config(tmp_path).control_endpoints]
    replicas = workload["spec"]["replicas"]
    assert replicas >= 2
    assert [(u.hostname, u.port) for u in urls] == [
        (f"{workload['metadata']['name']}-{i}.{domain}", headless["spec"]["ports"][0]["port"]) for i in range(replicas)]


def test_control_plane_store_is_the_redis_service(tmp_path: Path) -> None:
    cfg = control_config(tmp_path)
    assert not cfg.dev and cfg.api_keys == {"prod": TEST_SECRET}
    store = urlsplit(cfg.store)
    service = find("Service", "levelchat-redis")
    assert store.scheme == "redis"
    assert store.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"
    assert store.port == service["spec"]["ports"][0]["port"]
    workload, _ = container_running(CONTROL_ENTRY)
    assert workload["spec"]["replicas"] >= 2  # several replicas: why the store is Redis


def test_the_secret_template_placeholder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="shorter than 32"):
        sfu_config(tmp_path, secret=PLACEHOLDER_SECRET)
    with pytest.raises(ValueError, match="shorter than 32"):
        control_config(tmp_path, secret=PLACEHOLDER_SECRET)


def test_a_typo_in_a_node_variable_is_refused(tmp_path: Path) -> None:
    _, container = container_running(NODE_ENTRY)
    env = pod_env(container)
    env["LEVELCHAT_SFU_CONTROLURLS"] = env.pop("LEVELCHAT_SFU_CONTROL_URLS")
    with pytest.raises(ConfigError, match="LEVELCHAT_SFU_CONTROLURLS"):
        sfu_config(tmp_path, env=env)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_builds_the_manifests() -> None:
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    expected = [d for d in documents() if d["kind"] not in ("Kustomization", "Secret")]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in expected)
