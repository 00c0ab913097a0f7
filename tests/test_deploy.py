"""deploy/: the DaemonSet manifest against the Kubernetes schemas (offline), and the image and
manifest kept true to the code (every `dnstrail record` option they pass exists)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate as kv
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "deploy" / "k8s" / "daemonset.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
#: Kubernetes versions the manifest must validate against (schemas ship with the package).
VERSIONS = ("1.27", "1.33")


def _docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def _by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    docs = _docs()
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "ClusterRole",
                                         "ClusterRoleBinding", "DaemonSet"}
    for doc in docs:
        kv.validate(doc, version, strict=True)  # raises ValidationError


def test_the_validator_rejects_a_broken_daemonset() -> None:
    ds = _by_kind("DaemonSet")
    ds["spec"]["template"]["spec"]["hostPID"] = "yes"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)
    ds = _by_kind("DaemonSet")
    ds["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo'd key
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, VERSIONS[-1], strict=True)


def test_daemonset_has_what_bcc_and_attribution_need() -> None:
    ds = _by_kind("DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert spec["hostPID"] is True and c["securityContext"]["privileged"] is True
    volumes = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    for path in ("/sys/kernel/tracing", "/sys/kernel/debug", "/lib/modules", "/usr/src",
                 "/var/log/pods", "/sys/fs/cgroup"):
        assert mounts.get(path) == path, path
    assert mounts["/var/lib/dnstrail"] == "/var/lib/dnstrail"  # the output, on the node
    env = {e["name"]: e for e in c["env"]}
    assert re.fullmatch(r"\d+[smh]", env["DURATION"]["value"])
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # the service account may list pods, and the pod runs as it
    sa = _by_kind("ServiceAccount")
    role = _by_kind("ClusterRole")
    binding = _by_kind("ClusterRoleBinding")
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    assert any("pods" in r["resources"] and "list" in r["verbs"] for r in role["rules"])
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"]} in binding["subjects"]


def test_record_options_in_the_manifest_exist() -> None:
    from capture.commands import record

    known = {o for p in record.params for o in p.opts}
    script = _by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    lines = [ln for ln in script.splitlines() if "dnstrail record" in ln]
    assert lines
    used = set()
    for ln in lines:
        used |= {w for w in shlex.split(ln.replace("$pods", "--pods-json X"))
                 if w.startswith("-")}
    assert used and used <= known, used - known
    assert "--pods-json" in used and "--duration" in used


def test_dockerfile_copies_what_exists_and_uses_debian_bcc() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM debian:12", text, re.MULTILINE)
    assert "python3-bpfcc" in text
    for m in re.finditer(r"^COPY (.+) \S+$", text, re.MULTILINE):
        for src in m.group(1).split():
            assert (ROOT / src).exists(), src
    assert "linux-headers" not in text  # headers come from the host


def test_deploy_doc_has_the_node_recipe() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "kubectl debug node/" in doc and "deploy/k8s/daemonset.yaml" in doc
