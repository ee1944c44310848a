"""deploy/kubernetes/: the kustomize bases checked without a cluster.

Every manifest (and the ConfigMap the top kustomization generates) validated
against the Kubernetes schemas by ``kubernetes-validate`` (offline, strict:
an unknown field fails); every kustomization's resources present; every
config a pod runs with loaded by the daemon's own twistd options, so a key
typo fails here as it would at start (the per-pod files the init containers
write are written by their own scripts, run with ``sh``); the ports of the
containers and Services equal the configs' listeners and the names the
configs use; every probe asked of the daemon's real service on a memory
reactor, so it names a route that exists on that port."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import kubernetes_validate
import pytest
import yaml
from daemon_scrape import get, readiness, running, site_stub
from inline_pool import InlineReactor, inline
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from kraken.buildindex import tags
from kraken.buildindex import tap as buildindex_tap
from kraken.net.endpoints import host_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
# The Kubernetes version the manifests are checked against (a schema kubernetes-validate ships).
KUBERNETES_VERSION = "1.33.0"
# What the downward API gives a pod, in these tests.
FIELDS = {"status.podIP": "10.244.1.7", "status.hostIP": "10.0.0.7"}
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
# Where each daemon keeps its state: moved under tmp_path before its service is built.
STATE = {
    "kraken-origin": ("store", "root"),
    "kraken-build-index": ("database",),
    "kraken-proxy": ("uploads", "root"),
    "kraken-agent": ("store", "root"),
    "kraken-tracker": None,
}


# -- the kustomize tree --


def kustomization(directory: Path) -> dict[str, Any]:
    doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(doc, dict), directory
    return doc


def kustomize_dirs(directory: Path = KUBE) -> Iterator[Path]:
    """``directory`` and every kustomization its resources name, depth first."""
    yield directory
    for entry in kustomization(directory).get("resources", []):
        if (directory / entry).is_dir():
            yield from kustomize_dirs(directory / entry)


def manifest_files() -> list[Path]:
    return [
        d / entry
        for d in kustomize_dirs()
        for entry in kustomization(d).get("resources", [])
        if not (d / entry).is_dir()
    ]


def generated_configmaps() -> list[dict[str, Any]]:
    """The ConfigMaps the top kustomization generates, as kustomize builds them (without the hash suffix)."""
    out = []
    for generator in kustomization(KUBE).get("configMapGenerator", []):
        data = {Path(f).name: (KUBE / f).read_text() for f in generator["files"]}
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data})
    return out


def resources() -> list[dict[str, Any]]:
    docs = [doc for path in manifest_files() for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs + generated_configmaps()


def named(kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def workloads() -> list[dict[str, Any]]:
    return [r for r in resources() if r["kind"] in WORKLOADS]


def test_every_kustomization_names_files_that_exist_and_every_manifest_is_named() -> None:
    for directory in kustomize_dirs():
        doc = kustomization(directory)
        for entry in doc.get("resources", []):
            path = directory / entry
            assert path.is_file() or (path / "kustomization.yaml").is_file(), f"{directory}: {entry}"
        for generator in doc.get("configMapGenerator", []):
            for f in generator["files"]:
                assert (directory / f).is_file(), f"{directory}: {f}"
    named_files = set(manifest_files())
    on_disk = {p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml" and p.parent.name != "config"}
    assert on_disk - named_files == set(), "a manifest no kustomization names"
    configs = {p.name for p in (KUBE / "config").iterdir()}
    assert configs == set(generated_configmaps()[0]["data"]), "a config file the ConfigMap leaves out"


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBE)))
def test_every_manifest_is_valid_against_the_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_generated_config_map_is_valid() -> None:
    for doc in generated_configmaps():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_is_strict() -> None:
    doc = named("Deployment", "kraken-proxy")
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def test_every_image_has_a_tag_and_none_is_latest() -> None:
    for workload in workloads():
        for container in containers(workload):
            name, _, tag = container["image"].rpartition(":")
            assert name and tag and "/" not in tag, f"{workload['metadata']['name']}: {container['image']} has no tag"
            assert tag != "latest", f"{workload['metadata']['name']}: {container['image']}"


def test_the_dockerfile_builds_the_image_the_manifests_name() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert "getPlugins(IPlugin)" in dockerfile  # the plugin cache, built while site-packages is writable
    uid = re.search(r"^USER (\d+)", dockerfile, re.M)
    assert uid is not None
    images = {c["image"].rpartition(":")[0] for w in workloads() for c in containers(w)}
    assert "kraken" in images
    for workload in workloads():
        if workload["metadata"]["name"] == "kraken-redis":
            continue
        user = pod_spec(workload).get("securityContext", {}).get("runAsUser")
        for container in pod_spec(workload)["containers"]:
            assert container.get("securityContext", {}).get("runAsUser", user) == int(uid.group(1))


# -- the configs the daemons run with --


def daemon_container(workload: dict[str, Any]) -> dict[str, Any] | None:
    """The container that runs ``twistd kraken-*`` (None for Redis)."""
    for container in pod_spec(workload)["containers"]:
        if "twistd" in container.get("command", []):
            return container
    return None


def daemons() -> list[dict[str, Any]]:
    return [w for w in workloads() if daemon_container(w) is not None]


def tap_and_config(container: dict[str, Any]) -> tuple[str, str]:
    command = container["command"]
    [tap] = [word for word in command if word.startswith("kraken-")]
    return tap, command[command.index("--config") + 1]


def init_env(container: dict[str, Any], pod_name: str, etc: Path, run: Path) -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin"}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = pod_name if field == "metadata.name" else FIELDS[field]
    return env | {"KRAKEN_ETC": str(etc), "KRAKEN_RUN": str(run)}


def pod_config(workload: dict[str, Any], tmp_path: Path) -> Path:
    """The config file the daemon of ``workload``'s first pod starts with, written as the pod writes it."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir(parents=True)
    run.mkdir()
    for configmap in generated_configmaps():
        for name, text in configmap["data"].items():
            (etc / name).write_text(text)
    _, path = tap_and_config(daemon_container(workload) or {})
    directory, name = path.rsplit("/", 1)
    if directory == "/etc/kraken":
        return etc / name
    assert directory == "/run/kraken", path
    [writer] = [c for c in pod_spec(workload).get("initContainers", []) if c["name"] == "identity"]
    script = writer["args"][0]
    pod_name = workload["metadata"]["name"] + "-0"
    subprocess.run(["sh", "-c", script], env=init_env(writer, pod_name, etc, run), check=True)
    return run / name


def service_maker(tap: str) -> Any:
    [maker] = [m for m in getPlugins(IServiceMaker) if m.tapname == tap]
    return maker


def parsed(workload: dict[str, Any], tmp_path: Path) -> tuple[Any, Any]:
    """(the daemon's twistd Options, its config), loaded as ``twistd kraken-<name> --config`` loads it."""
    tap, _ = tap_and_config(daemon_container(workload) or {})
    options = service_maker(tap).options()
    options.parseOptions(["--config", str(pod_config(workload, tmp_path))])
    return options, options["parsed"]


@pytest.fixture(params=[w["metadata"]["name"] for w in daemons()])
def daemon(request: pytest.FixtureRequest) -> dict[str, Any]:
    [workload] = [w for w in daemons() if w["metadata"]["name"] == request.param]
    return workload


def test_every_daemon_loads_its_config_with_its_own_loader(daemon: dict[str, Any], tmp_path: Path) -> None:
    _, config = parsed(daemon, tmp_path)
    assert type(config).__name__.endswith("Config")


def test_a_key_typo_in_a_mounted_config_stops_the_daemon(tmp_path: Path) -> None:
    workload = named("Deployment", "kraken-tracker")
    config = pod_config(workload, tmp_path)
    config.write_text(config.read_text() + "anounce_interval: 3s\n")
    options = service_maker("kraken-tracker").options()
    with pytest.raises(usage.UsageError, match="anounce_interval"):
        options.parseOptions(["--config", str(config)])


# -- ports and names --


def port_of(description: str) -> int:
    address = host_port(description, "*")
    assert address is not None, description
    return int(address.rpartition(":")[2])


def listeners(config: Any) -> dict[str, int]:
    """Every listener of a daemon's config: key -> port."""
    out = {key: port_of(getattr(config, key)) for key in ("listen_http", "listen_registry", "listen_api")
           if hasattr(config, key)}  # fmt: skip
    if hasattr(config, "p2p"):
        out["p2p.listen"] = port_of(config.p2p.listen)
    return out


def container_ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def test_the_container_ports_are_the_configs_listeners(daemon: dict[str, Any], tmp_path: Path) -> None:
    _, config = parsed(daemon, tmp_path)
    ports = container_ports(daemon_container(daemon) or {})
    assert sorted(ports.values()) == sorted(listeners(config).values())


def advertised_port(address: str) -> int:
    return int(address.rpartition(":")[2].rstrip("/"))


def test_what_a_pod_advertises_is_its_own_address_on_its_listeners(daemon: dict[str, Any], tmp_path: Path) -> None:
    _, config = parsed(daemon, tmp_path)
    ports = listeners(config)
    name = daemon["metadata"]["name"]
    if name == "kraken-origin":
        assert config.advertised() == f"{FIELDS['status.podIP']}:{ports['listen_http']}"
        assert config.p2p.advertise == f"{FIELDS['status.podIP']}:{ports['p2p.listen']}"
    elif name == "kraken-agent":
        assert config.p2p.advertise == f"{FIELDS['status.hostIP']}:{ports['p2p.listen']}"
    elif name == "kraken-build-index":
        service = daemon["spec"]["serviceName"]
        nodes = [f"http://{name}-{i}.{service}:{ports['listen_http']}" for i in range(daemon["spec"]["replicas"])]
        assert list(config.cluster.nodes) == nodes  # one per replica, each the pod's DNS name
        assert config.cluster.advertise == nodes[0]


def selects(service: dict[str, Any], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


def service_port(name: str, port: int, *, headless: bool) -> dict[str, Any]:
    """The Service ``name`` and its port ``port``, checked to lead to a pod port of the same number."""
    service = named("Service", name)
    assert (service["spec"].get("clusterIP") == "None") == headless, name
    [entry] = [p for p in service["spec"]["ports"] if p["port"] == port]
    selected = [w for w in workloads() if selects(service, w)]
    assert selected, f"Service {name} selects no pod"
    for workload in selected:
        ports = {n: p for c in pod_spec(workload)["containers"] for n, p in container_ports(c).items()}
        assert ports.get(entry["targetPort"], entry["targetPort"]) == port, name
    return service


def url_host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[1].rstrip("/").rpartition(":")
    return host, int(port)


def test_the_names_the_configs_use_are_services_on_those_ports(tmp_path: Path) -> None:
    configs = {w["metadata"]["name"]: parsed(w, tmp_path / w["metadata"]["name"])[1] for w in daemons()}
    origin = configs["kraken-origin"]
    ring, ring_port = origin.cluster.dns.rsplit(":", 1)
    assert named("StatefulSet", "kraken-origin")["spec"]["serviceName"] == ring
    # A starting origin must find itself in the ring before it is ready.
    assert service_port(ring, int(ring_port), headless=True)["spec"]["publishNotReadyAddresses"] is True
    for name in ("kraken-tracker", "kraken-build-index", "kraken-proxy"):
        assert service_port(*url_host_port(configs[name].origin), headless=False)
    for name, key in (("kraken-agent", "tracker"), ("kraken-agent", "build_index"), ("kraken-proxy", "build_index")):
        dns, port = getattr(configs[name], key).dns.rsplit(":", 1)
        assert service_port(dns, int(port), headless=True)
    redis, port = configs["kraken-tracker"].peer_store.redis.address.rsplit(":", 1)
    assert service_port(redis, int(port), headless=False)
    assert service_port("kraken-proxy", listeners(configs["kraken-proxy"])["listen_http"], headless=False)


def test_the_daemonset_puts_containerds_mirror_on_the_agents_registry(tmp_path: Path) -> None:
    agent = named("DaemonSet", "kraken-agent")
    _, config = parsed(agent, tmp_path)
    hosts = tomllib.loads((KUBE / "config" / "hosts.toml").read_text())
    [(url, host)] = hosts["host"].items()
    assert url == f"http://127.0.0.1:{listeners(config)['listen_registry']}"
    assert config.listen_registry.endswith("interface=127.0.0.1") and not config.allow_remote_registry
    assert host["capabilities"] == ["pull", "resolve"]
    spec = pod_spec(agent)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    [writer] = [c for c in spec["initContainers"] if c["name"] == "containerd-hosts"]
    mounts = {m["mountPath"]: m["name"] for m in writer["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/host/certs.d"]]["hostPath"]["path"] == "/etc/containerd/certs.d"
    assert "/host/certs.d/_default/hosts.toml" in writer["args"][0]


# -- probes --


def probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        if kind in container:
            yield kind, container[kind]["httpGet"]


def with_state_in(config: Any, key: tuple[str, ...] | None, tmp_path: Path) -> Any:
    if key is None:
        return config
    if len(key) == 1:
        return attrs.evolve(config, **{key[0]: str(tmp_path / "state" / "db")})
    inner = attrs.evolve(getattr(config, key[0]), **{key[1]: str(tmp_path / "state")})
    return attrs.evolve(config, **{key[0]: inner})


def test_every_daemon_has_both_probes_and_requests(daemon: dict[str, Any]) -> None:
    container = daemon_container(daemon) or {}
    paths = {kind: probe["path"] for kind, probe in probes(container)}
    assert (paths["readinessProbe"], paths["livenessProbe"]) == ("/readiness", "/health")
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])


def test_every_probe_names_a_route_of_the_daemon_on_that_port(
    daemon: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options, config = parsed(daemon, tmp_path)
    options["parsed"] = with_state_in(config, STATE[daemon["metadata"]["name"]], tmp_path)
    container = daemon_container(daemon) or {}
    # The build-index's /health asks its tag database: its queries run at once, on this thread.
    monkeypatch.setattr(buildindex_tap, "open_pool", lambda path, reactor: inline(tags.open_pool(path, reactor)))
    reactor = InlineReactor()
    with running(service_maker(tap_and_config(container)[0]).makeService(options, reactor)):
        for kind, probe in probes(container):
            port = container_ports(container).get(probe["port"], probe["port"])
            stub = site_stub(reactor, port)
            if probe["path"] == "/readiness":
                code, doc = readiness(stub, reactor)
                assert code in (200, 503) and "ready" in doc, kind
            else:
                assert get(stub, probe["path"])[0] == 200, kind
