"""deploy/: the Kubernetes example agrees with itself, with the CLI and with the
Python files it ships, checked without a cluster.

Manifests are parsed with PyYAML (skipped without it); the container's flags are
checked against ``python -m blazen_peer serve --help`` / ``health --help``.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
MANIFEST_DIR = DEPLOY / "kubernetes"
PY_FILES = (DEPLOY / "parent.py", DEPLOY / "my_steps.py")
NAMESPACE = "ml"
SERVICE = "blazen-peers"
#: After --grace the peer needs ~2 s to cancel leftover runs and send their replies,
#: ~2 s to close connections, and then the interpreter exits: SIGKILL must come later.
SHUTDOWN_MARGIN_SECS = 5

Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    """Every YAML document under deploy/kubernetes/, with `_file` naming its file."""
    try:
        import yaml  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        pytest.skip("needs PyYAML (pip install '.[test]')")
    loaded: list[Doc] = []
    for path in sorted(MANIFEST_DIR.rglob("*.y*ml")):
        with path.open() as stream:
            for doc in yaml.safe_load_all(stream):
                if doc is None:
                    continue
                assert isinstance(doc, dict), f"{path}: a document is not a mapping: {doc!r}"
                loaded.append({**doc, "_file": str(path.relative_to(REPO_ROOT))})
    assert loaded, f"no manifests under {MANIFEST_DIR}"
    return loaded


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Doc) -> Doc:
    containers: list[Doc] = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['_file']}: expected one container"
    return containers[0]


def peers(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment", SERVICE)


def flag_value(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def flags(args: list[str]) -> list[str]:
    return [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]


def probes(workload: Doc) -> Iterator[tuple[str, Doc]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container(workload).get(kind)
        if probe is not None:
            yield kind, probe


def probe_port(probe: Doc) -> int:
    """The port a probe checks: a native grpc/tcpSocket probe's port, or the
    port of the address an exec probe passes to `blazen-peer health`."""
    for native in ("grpc", "tcpSocket", "httpGet"):
        if native in probe:
            return int(probe[native]["port"])
    command: list[str] = probe["exec"]["command"]
    assert command[:2] == ["blazen-peer", "health"], command
    port = urlsplit(command[2]).port
    assert port is not None, f"no port in {command[2]!r}"
    return port


def cli_help(subcommand: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "blazen_peer", subcommand, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, (
        f"`python -m blazen_peer {subcommand} --help` failed ({completed.returncode}):\n"
        f"{completed.stdout}{completed.stderr}"
    )
    return completed.stdout


def assert_flags_documented(used: list[str], help_text: str, where: str) -> None:
    unknown = [
        flag for flag in used if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text)
    ]
    assert not unknown, f"{where} uses flags the CLI does not accept: {unknown}\n{help_text}"


def module_constant(path: Path, name: str) -> str:
    for node in ast.parse(path.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise AssertionError(f"{path} has no string constant {name}")


def service_names(namespace: str = NAMESPACE) -> set[str]:
    base = SERVICE
    return {
        base,
        f"{base}.{namespace}",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}.svc.cluster.local",
        f"*.{base}.{namespace}.svc.cluster.local",
    }


def test_every_manifest_parses_and_lives_in_the_namespace(docs: list[Doc]) -> None:
    for doc in docs:
        where = doc["_file"]
        assert doc.get("apiVersion") and doc.get("kind"), f"{where}: {doc}"
        assert doc.get("metadata", {}).get("name"), f"{where}: {doc['kind']} has no name"
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (
                f"{where}: {doc['kind']} {doc['metadata']['name']} is not in {NAMESPACE}"
            )
    one(docs, "Namespace", NAMESPACE)
    for kind in ("Service", "Deployment", "PodDisruptionBudget", "Certificate", "Issuer"):
        assert find(docs, kind), f"no {kind} among the manifests"


def test_serve_args_use_only_flags_the_cli_accepts(docs: list[Doc]) -> None:
    peer = container(peers(docs))
    assert peer["command"] == ["blazen-peer"], peer["command"]
    args: list[str] = peer["args"]
    assert args[0] == "serve", args
    assert_flags_documented(flags(args), cli_help("serve"), "the Deployment's `serve`")


def test_health_probes_use_only_flags_the_cli_accepts(docs: list[Doc]) -> None:
    help_text = cli_help("health")
    for kind, probe in probes(peers(docs)):
        if "exec" in probe:
            command = probe["exec"]["command"]
            assert_flags_documented(flags(command), help_text, f"the {kind}")


def test_the_peer_has_readiness_and_liveness_probes(docs: list[Doc]) -> None:
    kinds = {kind for kind, _ in probes(peers(docs))}
    assert {"readinessProbe", "livenessProbe"} <= kinds, kinds


def test_termination_grace_period_outlasts_the_drain_grace(docs: list[Doc]) -> None:
    deployment = peers(docs)
    grace = float(flag_value(container(deployment)["args"], "--grace"))
    termination = pod_spec(deployment)["terminationGracePeriodSeconds"]
    assert termination >= grace + SHUTDOWN_MARGIN_SECS, (
        f"terminationGracePeriodSeconds {termination} must exceed --grace {grace} by "
        f"{SHUTDOWN_MARGIN_SECS} s, or SIGKILL cuts off runs the grace lets finish"
    )


def test_listen_container_service_and_probe_ports_agree(docs: list[Doc]) -> None:
    deployment = peers(docs)
    peer = container(deployment)
    listen_port = int(flag_value(peer["args"], "--listen").rsplit(":", 1)[1])
    container_ports = {p["name"]: p["containerPort"] for p in peer["ports"]}
    assert list(container_ports.values()) == [listen_port], (container_ports, listen_port)
    service = one(docs, "Service", SERVICE)
    for port in service["spec"]["ports"]:
        assert port["port"] == listen_port, port
        target = port.get("targetPort", port["port"])
        assert container_ports.get(target, target) == listen_port, port
    for kind, probe in probes(deployment):
        assert probe_port(probe) == listen_port, f"{kind} checks another port"


def test_service_is_headless_and_selects_only_ready_peers(docs: list[Doc]) -> None:
    service = one(docs, "Service", SERVICE)["spec"]
    assert service["clusterIP"] == "None"
    assert service["publishNotReadyAddresses"] is False
    deployment = peers(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items(), (service["selector"], labels)
    assert deployment["spec"]["replicas"] >= 2
    budget = one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert budget.items() <= labels.items(), (budget, labels)


def test_node_id_is_the_pod_name(docs: list[Doc]) -> None:
    peer = container(peers(docs))
    assert flag_value(peer["args"], "--node-id") == "$(POD_NAME)"
    env = {e["name"]: e for e in peer["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def secret_mounts(workload: Doc) -> dict[str, str]:
    """mountPath -> Secret name, for the workload's container."""
    secrets = {
        volume["name"]: volume["secret"]["secretName"]
        for volume in pod_spec(workload).get("volumes", [])
        if "secret" in volume
    }
    return {
        mount["mountPath"]: secrets[mount["name"]]
        for mount in container(workload).get("volumeMounts", [])
        if mount["name"] in secrets
    }


def certificate_for_secret(docs: list[Doc], secret: str) -> Doc:
    found = [doc for doc in find(docs, "Certificate") if doc["spec"]["secretName"] == secret]
    assert len(found) == 1, f"expected one Certificate writing Secret {secret}, found {found}"
    return found[0]


def test_tls_files_come_from_the_peers_certificate(docs: list[Doc]) -> None:
    deployment = peers(docs)
    mounts = secret_mounts(deployment)
    paths = [arg for arg in container(deployment)["args"] if arg.startswith("/")]
    for _, probe in probes(deployment):
        paths += [arg for arg in probe.get("exec", {}).get("command", []) if arg.startswith("/")]
    assert paths, "the peers run without TLS files"
    for path in paths:
        directory, name = path.rsplit("/", 1)
        assert directory in mounts, f"{path} is not in a mounted Secret ({mounts})"
        assert name in {"tls.crt", "tls.key", "ca.crt"}, f"cert-manager writes no {name}"
    (secret,) = set(mounts.values())
    certificate_for_secret(docs, secret)


def test_peer_certificate_names_the_service_and_the_probe(docs: list[Doc]) -> None:
    deployment = peers(docs)
    (secret,) = set(secret_mounts(deployment).values())
    spec = certificate_for_secret(docs, secret)["spec"]
    names = set(spec["dnsNames"])
    assert service_names() <= names, f"missing {service_names() - names}"
    for kind, probe in probes(deployment):
        if "exec" in probe:
            command = probe["exec"]["command"]
            if "--tls-domain" in command:
                checked = flag_value(command, "--tls-domain")
            else:
                checked = urlsplit(command[2]).hostname
            assert checked in names, f"the {kind} checks for {checked}, not in the certificate"
    assert {"server auth", "client auth"} <= set(spec["usages"]), spec["usages"]


def test_certificates_chain_to_the_ca_issuer(docs: list[Doc]) -> None:
    issuers = {doc["metadata"]["name"]: doc["spec"] for doc in find(docs, "Issuer")}
    certificates = find(docs, "Certificate")
    for certificate in certificates:
        ref = certificate["spec"]["issuerRef"]
        assert ref.get("kind", "Issuer") == "Issuer" and ref["name"] in issuers, ref
    ca_issuers = [spec["ca"]["secretName"] for spec in issuers.values() if "ca" in spec]
    assert len(ca_issuers) == 1, issuers
    ca = certificate_for_secret(docs, ca_issuers[0])["spec"]
    assert ca["isCA"] is True
    assert "selfSigned" in issuers[ca["issuerRef"]["name"]], "the CA is not bootstrapped"
    leaves = [c["spec"] for c in certificates if not c["spec"].get("isCA")]
    assert leaves and all(leaf["issuerRef"]["name"] != ca["issuerRef"]["name"] for leaf in leaves)


def test_parent_defaults_match_the_manifests(docs: list[Doc]) -> None:
    address = urlsplit(module_constant(DEPLOY / "parent.py", "DEFAULT_PEERS"))
    tls_dir = module_constant(DEPLOY / "parent.py", "DEFAULT_TLS_DIR")
    assert address.scheme == "https"
    assert address.hostname in service_names()
    assert address.port == one(docs, "Service", SERVICE)["spec"]["ports"][0]["port"]
    job = one(docs, "Job")
    env = {e["name"]: e.get("value") for e in container(job).get("env", [])}
    assert env.get("BLAZEN_PEERS", address.geturl()) == address.geturl()
    assert env.get("BLAZEN_TLS_DIR", tls_dir) == tls_dir
    mounts = secret_mounts(job)
    assert tls_dir in mounts, f"the parent Job mounts no Secret at {tls_dir}"
    usages = certificate_for_secret(docs, mounts[tls_dir])["spec"]["usages"]
    assert "client auth" in usages


def test_deployment_and_job_run_the_image_the_dockerfile_builds(docs: list[Doc]) -> None:
    images = {container(peers(docs))["image"], container(one(docs, "Job"))["image"]}
    assert len(images) == 1, images
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    module = container(peers(docs))["args"][1]
    assert (DEPLOY / f"{module}.py").is_file(), f"`serve {module}`: no deploy/{module}.py"
    for name in (f"{module}.py", "parent.py"):
        assert re.search(rf"^COPY .*\b{re.escape(name)}\b", dockerfile, re.MULTILINE), name


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: p.name)
def test_python_files_compile(path: Path, tmp_path: Path) -> None:
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def steps_called_by_parent() -> set[str]:
    called: set[str] = set()
    for node in ast.walk(ast.parse((DEPLOY / "parent.py").read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "run_remote_workflow"
        ):
            step_list = node.args[1]
            assert isinstance(step_list, ast.List | ast.Tuple), ast.dump(step_list)
            called |= {ast.literal_eval(element) for element in step_list.elts}
    assert called, "parent.py calls no run_remote_workflow with literal step ids"
    return called


RUN_STEPS = """
import asyncio, json
import blazen_peer
import my_steps

async def run(step_id, text):
    return await (await blazen_peer.Workflow("wf", [step_id]).run(text=text)).result()

async def main():
    embedded = await run("my_app::embed", "a b c")
    label = await run("my_app::classify", "ok?")
    print(json.dumps({"ids": blazen_peer.registered_step_ids(), "embed": embedded, "label": label}))

asyncio.run(main())
"""


def test_steps_module_registers_and_runs_the_steps_the_parent_calls() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", RUN_STEPS],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert steps_called_by_parent() <= set(report["ids"]), report["ids"]
    assert {"my_app::embed", "my_app::classify"} <= set(report["ids"])
    assert len(report["embed"]["vector"]) == 8
    assert report["label"]["label"] == "question"


def test_readme_describes_every_file_and_has_the_excerpt() -> None:
    readme = (DEPLOY / "README.md").read_text()
    shipped = [*PY_FILES, DEPLOY / "Dockerfile", *sorted(MANIFEST_DIR.rglob("*.yaml"))]
    for path in shipped:
        name = str(path.relative_to(DEPLOY))
        assert f"`{name}`" in readme, f"deploy/README.md does not describe {name}"
    assert "## README excerpt" in readme and "## Running a fleet on Kubernetes" in readme
