"""The Helm chart (charts/z2m) lints, renders, validates and installs with least privilege.

Rendering and schema checks need only `helm`; the rest runs against the real
apiserver: a server-side dry run of the rendered objects, then a real install
whose ServiceAccount's permissions are asked of the apiserver by impersonation,
in both scopes: cluster-wide, and namespaced (a Role per watched namespace).
The ScalingStage CRD is cluster-scoped and shared with the other tests: Helm
skips it when it exists and never deletes it, and neither do these tests.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, eventually, kubectl

pytestmark = pytest.mark.cluster

CHART = ROOT / "charts" / "z2m"
CRD = "scalingstages.z2m.dev"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
}


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for `helm`: its caches and config in a scratch directory."""
    home = tmp_path_factory.mktemp("helm")
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


@pytest.fixture(scope="module")
def helm_bin() -> str:
    """The helm built by hack/build-binaries.sh (or $Z2M_HELM)."""
    if given := os.environ.get("Z2M_HELM"):
        return given
    out = subprocess.run(
        [str(ROOT / "hack" / "build-binaries.sh")], check=True, capture_output=True, text=True
    )
    return str(Path(out.stdout.strip()) / "helm")


@dataclass
class Helm:
    binary: str
    env: dict[str, str]
    kubeconfig: str

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.binary, "--kubeconfig", self.kubeconfig, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def template(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("template", *args, str(CHART), check=check)


@pytest.fixture(scope="module")
def helm(helm_bin: str, helm_env: dict[str, str], kubeconfig: str) -> Helm:
    return Helm(helm_bin, helm_env, kubeconfig)


def docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kinds(text: str) -> list[str]:
    return [d["kind"] for d in docs(text)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def create_namespace(kubeconfig: str, name: str, labels: dict[str, str] | None = None) -> None:
    kubectl("create", "namespace", name, kubeconfig=kubeconfig)
    pairs = [f"{k}={v}" for k, v in {"z2m.dev/test": "true", **(labels or {})}.items()]
    kubectl("label", "namespace", name, *pairs, kubeconfig=kubeconfig)


def delete_namespace(kubeconfig: str, name: str) -> None:
    kubectl(
        "delete", "namespace", name, "--ignore-not-found", "--wait=false", kubeconfig=kubeconfig
    )


# --- the chart on its own -------------------------------------------------------------------


def test_chart_crd_is_a_byte_identical_copy_of_the_generated_crd() -> None:
    chart_crd = CHART / "crds" / "scalingstage.yaml"
    assert chart_crd.read_bytes() == (ROOT / "crds" / "scalingstage.yaml").read_bytes(), (
        "charts/z2m/crds/scalingstage.yaml is stale: cp crds/scalingstage.yaml charts/z2m/crds/"
    )


def test_chart_rbac_is_the_same_as_the_plain_manifests(helm: Helm) -> None:
    rendered = docs(helm.template("z2m-x", "--namespace", "z2m-system").stdout)
    manifests = docs((ROOT / "manifests" / "02-rbac.yaml").read_text())

    def rules(objects: list[dict[str, Any]], kind: str) -> list[Any]:
        return sorted(
            (o["rules"] for o in objects if o["kind"] == kind),
            key=lambda r: yaml.safe_dump(r),
        )

    assert rules(rendered, "ClusterRole") == rules(manifests, "ClusterRole")
    # The Lease's Role names the Lease, whose name differs: the chart's follows the release.
    lease_role = [
        {**r, "resourceNames": ["z2m-x"]} if "resourceNames" in r else r
        for r in rules(manifests, "Role")[0]
    ]
    assert rules(rendered, "Role") == [lease_role]
    assert sorted(o["roleRef"]["kind"] for o in rendered if o["kind"] == "RoleBinding") == [
        "ClusterRole",
        "Role",
    ]


def test_lint_strict(helm: Helm) -> None:
    result = helm("lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout, result.stdout


def test_defaults_render_one_of_each_kind_with_release_specific_names(helm: Helm) -> None:
    objects = docs(helm.template("mine", "--namespace", "ops").stdout)
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("ClusterRole", "mine-z2m") in names
    assert ("ClusterRole", "mine-z2m-credentials") in names
    assert not any(name.startswith("z2m-operator") for _, name in names)
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "z2m/operator:0.1.0"
    assert container["args"] == [
        "run",
        "--health-port=8080",
        "--metrics-port=9090",
        "--leader-elect",
        "--lease-name=mine-z2m",
        "--lease-duration=10",
        "--renew-deadline=7",
        "--retry-period=2",
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_values_become_z2m_run_flags_and_rolebindings(helm: Helm) -> None:
    objects = docs(
        helm.template(
            "r",
            "--namespace",
            "ops",
            "--set",
            "watchNamespaces={shop,blog}",
            "--set",
            "appNamespaces={shop,blog,shop}",
            "--set",
            "metricsPort=9100",
            "--set",
            "healthPort=8081",
            "--set",
            "verbose=true",
        ).stdout
    )
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "run",
        "--health-port=8081",
        "--metrics-port=9100",
        "--namespace=shop",
        "--namespace=blog",
        "--leader-elect",
        "--lease-name=r-z2m",
        "--lease-duration=10",
        "--renew-deadline=7",
        "--retry-period=2",
        "--verbose",
    ]
    bindings = [
        o
        for o in objects
        if o["kind"] == "RoleBinding" and o["metadata"]["name"] != "r-z2m-leader-election"
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["blog", "shop"]
    [service] = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["ports"][0]["port"] == 9100


def test_two_replicas_elect_a_leader_and_roll_by_default(helm: Helm) -> None:
    objects = docs(helm.template("r", "--namespace", "ops").stdout)
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    # A drain evicts one replica at a time: the budget selects exactly the operator's pods.
    [budget] = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert budget["spec"]["maxUnavailable"] == 1
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert "--leader-elect" in container["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env == {"POD_NAMESPACE": "metadata.namespace", "POD_NAME": "metadata.name"}


def test_one_replica_without_election_is_recreated_and_two_without_it_are_refused(
    helm: Helm,
) -> None:
    off = ("--set", "leaderElection.enabled=false")
    [deployment] = [
        o
        for o in docs(helm.template("r", *off, "--set", "replicaCount=1").stdout)
        if o["kind"] == "Deployment"
    ]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    # One replica gets no budget: one that allowed no eviction would block every drain.
    single = docs(helm.template("r", *off, "--set", "replicaCount=1").stdout)
    assert "PodDisruptionBudget" not in [o["kind"] for o in single]
    assert "--leader-elect" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    refused = helm.template("r", *off, check=False)
    assert refused.returncode != 0
    assert "replicaCount above 1 needs leaderElection.enabled" in refused.stderr


def test_empty_namespace_lists_watch_everything_and_bind_nothing(helm: Helm) -> None:
    objects = docs(
        helm.template("r", "--set", "watchNamespaces=null", "--set", "appNamespaces=null").stdout
    )
    bindings = [o["metadata"]["name"] for o in objects if o["kind"] == "RoleBinding"]
    assert bindings == ["r-z2m-leader-election"]  # the Lease's, in the release namespace
    [deployment] = [o for o in objects if o["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--namespace")]


WRITES = {"create", "update", "patch", "delete", "deletecollection", "*"}


def test_namespaced_scope_gives_a_role_per_watched_namespace_and_no_cluster_wide_write(
    helm: Helm,
) -> None:
    objects = docs(
        helm.template(
            "r",
            "--namespace",
            "ops",
            "--set",
            "scope=namespaced",
            "--set",
            "watchNamespaces={shop,blog}",
        ).stdout
    )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], []).append(o)
    assert sorted((o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind["Role"]) == [
        ("blog", "r-z2m"),
        ("ops", "r-z2m-leader-election"),
        ("shop", "r-z2m"),
    ]
    assert sorted(
        (b["metadata"]["namespace"], b["roleRef"]["kind"]) for b in by_kind["RoleBinding"]
    ) == [("blog", "Role"), ("ops", "Role"), ("shop", "Role")]
    [cluster_role] = by_kind["ClusterRole"]
    assert not [r for r in cluster_role["rules"] if WRITES & set(r["verbs"])], cluster_role
    # The Role holds the cluster-wide rules on namespaced objects, and may read its Secrets.
    full = docs(helm.template("r", "--namespace", "ops").stdout)
    [cluster_wide] = [
        o for o in full if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "r-z2m"
    ]
    [role] = [
        o["rules"]
        for o in by_kind["Role"]
        if o["metadata"]["namespace"] == "shop" and o["metadata"]["name"] == "r-z2m"
    ]
    secrets = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "get", "patch"]}
    assert secrets in role
    assert [r for r in role if r != secrets] == [
        r
        for r in cluster_wide["rules"]
        if r["resources"]
        not in (
            ["secrets"],
            ["namespaces"],
            ["customresourcedefinitions"],
            ["storageclasses"],
            ["nodes"],
        )
    ]


def test_service_monitor_needs_the_value_and_the_api(helm: Helm) -> None:
    api = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    on = ("--set", "serviceMonitor.enabled=true")
    assert "ServiceMonitor" not in kinds(helm.template("r", *api).stdout)
    assert "ServiceMonitor" not in kinds(helm.template("r", *on).stdout)
    assert "ServiceMonitor" in kinds(helm.template("r", *on, *api).stdout)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("metricsPort=notanumber", "/metricsPort"),
        ("healthPort=70000", "/healthPort"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces={Not_A_Namespace}", "/watchNamespaces/0"),
        ("serviceMonitor.enabld=true", "enabld"),
        ("metricsPort=8080", "healthPort and metricsPort must differ"),
        ("extraEnv[0].name=X,extraEnv[0].value=1", "/extraEnv/0/value"),
        ("scope=everywhere", "/scope"),
        ("scope=namespaced", "scope: namespaced needs watchNamespaces"),
    ],
)
def test_bad_values_fail_with_a_clear_message(helm: Helm, setting: str, message: str) -> None:
    result = helm.template("r", "--set", setting, check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


# --- against the apiserver -------------------------------------------------------------------


@pytest.fixture
def restricted_namespace(kubeconfig: str) -> Iterator[str]:
    """A fresh namespace enforcing the "restricted" Pod Security Standard."""
    name = unique("t-chart")
    create_namespace(kubeconfig, name, RESTRICTED)
    yield name
    delete_namespace(kubeconfig, name)


@pytest.mark.parametrize(
    "settings",
    [
        (),
        (
            "--set=watchNamespaces={default,kube-public}",
            "--set=appNamespaces={default,kube-public}",
            "--set=verbose=true",
            "--set=extraEnv[0].name=PYTHONUNBUFFERED",
            "--set-string=extraEnv[0].value=1",
            "--set=nodeSelector.kubernetes\\.io/os=linux",
            "--set=tolerations[0].operator=Exists",
            "--set=podAnnotations.example\\.com/a=b",
        ),
    ],
    ids=["defaults", "options"],
)
def test_rendered_chart_passes_a_server_side_dry_run(
    helm: Helm, kubeconfig: str, restricted_namespace: str, settings: tuple[str, ...]
) -> None:
    rendered = helm.template(
        unique("z2m-dry"), "--namespace", restricted_namespace, "--include-crds", *settings
    ).stdout
    assert CRD in rendered
    result = kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "-f",
        "-",
        kubeconfig=kubeconfig,
        stdin=rendered,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "PodSecurity" not in result.stderr, result.stderr
    applied = result.stdout
    for kind in ("customresourcedefinition", "serviceaccount", "clusterrole", "deployment"):
        assert kind in applied, applied


@dataclass
class Release:
    name: str
    namespace: str
    app_namespace: str
    service_account: str


@pytest.fixture(scope="module")
def release(helm: Helm, kubeconfig: str) -> Iterator[Release]:
    """The chart installed for real, with one application namespace."""
    name = unique("z2m-chart")
    namespace = unique("t-chart-sys")
    app_namespace = unique("t-chart-app")
    create_namespace(kubeconfig, app_namespace)
    try:
        helm(
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--set",
            f"appNamespaces={{{app_namespace}}}",
            "--wait",
            "--timeout",
            "120s",
        )
        yield Release(name, namespace, app_namespace, service_account=name)
    finally:
        helm("uninstall", name, "--namespace", namespace, "--wait", check=False)
        delete_namespace(kubeconfig, namespace)
        delete_namespace(kubeconfig, app_namespace)


def test_install_creates_the_operator_and_its_rbac(release: Release, kubeconfig: str) -> None:
    ns = ("--namespace", release.namespace)
    for obj in (
        f"deployment/{release.name}",
        f"serviceaccount/{release.service_account}",
        f"service/{release.name}-metrics",
    ):
        kubectl("get", obj, *ns, kubeconfig=kubeconfig)
    for obj in (
        f"clusterrole/{release.name}",
        f"clusterrole/{release.name}-credentials",
        f"clusterrolebinding/{release.name}",
    ):
        kubectl("get", obj, kubeconfig=kubeconfig)
    kubectl(
        "get",
        f"rolebinding/{release.name}-credentials",
        "--namespace",
        release.app_namespace,
        kubeconfig=kubeconfig,
    )
    ready = kubectl(
        "get",
        f"deployment/{release.name}",
        *ns,
        "-o",
        "jsonpath={.status.readyReplicas}",
        kubeconfig=kubeconfig,
    )
    assert ready.stdout == "2"  # two replicas behind the Lease


def test_install_meets_the_restricted_pod_security_standard(
    release: Release, kubeconfig: str
) -> None:
    pods = eventually(
        lambda: (
            kubectl(
                "get", "pods", "--namespace", release.namespace, "-o", "name", kubeconfig=kubeconfig
            ).stdout
        )
    )
    assert pods.startswith(f"pod/{release.name}-")
    # Labelling a namespace warns about every running pod the new level would reject.
    result = kubectl(
        "label",
        "--dry-run=server",
        "--overwrite",
        "namespace",
        release.namespace,
        *(f"{k}={v}" for k, v in RESTRICTED.items()),
        kubeconfig=kubeconfig,
    )
    assert "violate" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("verb", "resource", "where", "allowed"),
    [
        ("patch", "deployments.apps", "app", True),
        ("delete", "statefulsets.apps", "app", True),
        ("watch", "scalingstages.z2m.dev", "all", True),
        ("patch", "scalingstages.z2m.dev/status", "app", True),
        ("create", "secrets", "app", True),
        ("create", "secrets", "other", True),
        ("get", "secrets", "app", True),
        ("patch", "secrets", "app", True),
        ("list", "namespaces", "cluster", True),
        ("create", "leases.coordination.k8s.io", "release", True),
        ("create", "leases.coordination.k8s.io", "other", False),
        ("delete", "leases.coordination.k8s.io", "release", False),
        ("delete", "persistentvolumeclaims", "app", False),
        ("delete", "persistentvolumeclaims", "all", False),
        ("delete", "secrets", "app", False),
        ("list", "secrets", "app", False),
        ("get", "secrets", "kube-system", False),
        ("get", "secrets", "other", False),
        ("delete", "scalingstages.z2m.dev", "app", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "cluster", False),
        ("impersonate", "serviceaccounts", "all", False),
        ("*", "*", "all", False),
    ],
)
def test_service_account_has_least_privilege(
    release: Release, kubeconfig: str, verb: str, resource: str, where: str, allowed: bool
) -> None:
    assert can_i(release, kubeconfig, verb, resource, where) == allowed


def can_i(release: Release, kubeconfig: str, verb: str, resource: str, where: str) -> bool:
    """Ask the apiserver, impersonating the release's ServiceAccount."""
    scope = {
        "app": ["--namespace", release.app_namespace],
        "release": ["--namespace", release.namespace],
        "other": ["--namespace", "default"],
        "kube-system": ["--namespace", "kube-system"],
        "all": ["--all-namespaces"],
        "cluster": [],
    }[where]
    args = [verb, resource]
    if "/" in resource:
        resource, subresource = resource.split("/")
        args = [verb, resource, f"--subresource={subresource}"]
    subject = f"system:serviceaccount:{release.namespace}:{release.service_account}"
    result = kubectl(
        "auth", "can-i", *args, *scope, f"--as={subject}", kubeconfig=kubeconfig, check=False
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), (answer, result.stderr)
    return answer == "yes"


@pytest.fixture(scope="module")
def namespaced_release(helm: Helm, kubeconfig: str) -> Iterator[Release]:
    """The chart installed with scope: namespaced, watching one application namespace."""
    name = unique("z2m-ns")
    namespace = unique("t-chart-nssys")
    app_namespace = unique("t-chart-nsapp")
    create_namespace(kubeconfig, app_namespace)
    try:
        helm(
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--set",
            "scope=namespaced",
            "--set",
            f"watchNamespaces={{{app_namespace}}}",
            "--wait",
            "--timeout",
            "120s",
        )
        yield Release(name, namespace, app_namespace, service_account=name)
    finally:
        helm("uninstall", name, "--namespace", namespace, "--wait", check=False)
        delete_namespace(kubeconfig, namespace)
        delete_namespace(kubeconfig, app_namespace)


@pytest.mark.parametrize(
    ("verb", "resource", "where", "allowed"),
    [
        ("create", "deployments.apps", "app", True),
        ("delete", "statefulsets.apps", "app", True),
        ("watch", "scalingstages.z2m.dev", "app", True),
        ("patch", "scalingstages.z2m.dev/status", "app", True),
        ("get", "secrets", "app", True),
        ("create", "secrets", "app", True),
        ("list", "namespaces", "cluster", True),
        ("create", "deployments.apps", "kube-system", False),
        ("create", "deployments.apps", "other", False),
        ("patch", "configmaps", "kube-system", False),
        ("create", "secrets", "other", False),
        ("watch", "scalingstages.z2m.dev", "all", False),
        ("list", "deployments.apps", "all", False),
        ("delete", "secrets", "app", False),
        ("list", "secrets", "app", False),
        ("delete", "persistentvolumeclaims", "app", False),
        # PostgreSQL's Patroni gets a Role of its own in the app's namespace, nowhere else.
        ("create", "roles.rbac.authorization.k8s.io", "app", True),
        ("create", "roles.rbac.authorization.k8s.io", "other", False),
        ("*", "*", "app", False),
    ],
)
def test_namespaced_install_can_write_only_in_its_namespaces(
    namespaced_release: Release,
    kubeconfig: str,
    verb: str,
    resource: str,
    where: str,
    allowed: bool,
) -> None:
    assert can_i(namespaced_release, kubeconfig, verb, resource, where) == allowed


def test_uninstall_removes_everything_but_the_crd(helm: Helm, kubeconfig: str) -> None:
    name = unique("z2m-gone")
    namespace = unique("t-chart-gone")
    try:
        helm("install", name, str(CHART), "--namespace", namespace, "--create-namespace")
        kubectl("get", f"clusterrole/{name}", kubeconfig=kubeconfig)
        helm("uninstall", name, "--namespace", namespace, "--wait")
        for obj in (f"clusterrole/{name}", f"clusterrolebinding/{name}"):
            gone = kubectl("get", obj, "--ignore-not-found", "-o", "name", kubeconfig=kubeconfig)
            assert gone.stdout == ""
        eventually(
            lambda: (
                kubectl(
                    "get",
                    "all,serviceaccounts",
                    "--namespace",
                    namespace,
                    "-o",
                    "name",
                    "--selector",
                    f"app.kubernetes.io/instance={name}",
                    kubeconfig=kubeconfig,
                ).stdout
                == ""
            )
        )
        kubectl("get", f"crd/{CRD}", kubeconfig=kubeconfig)
    finally:
        helm("uninstall", name, "--namespace", namespace, check=False)
        delete_namespace(kubeconfig, namespace)
