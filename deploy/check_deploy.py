#!/usr/bin/env python3
"""Offline checks of Trike's deployable artifacts under deploy/ (run by CI).

    python3 -m venv .venv && .venv/bin/pip install -r deploy/requirements-check.txt
    .venv/bin/python deploy/check_deploy.py            # or: --deploy-dir DIR --kube-version 1.33

No cluster, no helm binary, no network, no cargo:
  (a) the Helm chart is linted (strict) and rendered with helm-python-sdk (the Helm v4 SDK
      through ctypes) three times: default values; persistence and ServiceMonitor disabled;
      every optional feature on;
  (b) every rendered object is validated against the Kubernetes JSON schema
      (kubernetes-validate, strict: unknown fields are errors) — CRDs (ServiceMonitor) get
      structural checks instead — and cross-checked (selectors, ports, volumes, probes,
      security context);
  (c) the rendered Trike configs parse, the processor listens on 0.0.0.0, and their keys are
      ones Trike knows (deploy/config/trike.yaml lists every key; see EXTRA_KEYS);
      deploy/config/*.yaml get the same key check (the Rust test `deploy_examples_validate`
      loads them for real);
  (d) the Grafana dashboard parses and every trike_* metric (and label) it queries exists;
  (e) the OpenTelemetry Collector config parses and its pipelines are consistent with Trike;
  (f) the Dockerfile is multi-stage and runs as a non-root USER.

Prints one line per check, then `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml

try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as e:  # pragma: no cover - environment problem, reported clearly
    print(f"FAIL imports: {e} (pip install -r deploy/requirements-check.txt)")
    print("0 passed, 1 failed")
    sys.exit(1)

RELEASE = "trike"
NAMESPACE = "observability"

# The metrics Trike exposes on /metrics, with their labels (src/admin/prom.rs,
# ingest/src/metrics.rs). Histograms also have _bucket{le}, _sum and _count.
METRICS: dict[str, set[str]] = {
    "trike_receiver_requests_total": {"transport", "signal", "outcome"},
    "trike_receiver_items_received_total": set(),
    "trike_receiver_items_rejected_total": {"reason"},
    "trike_receiver_observations_total": set(),
    "trike_engine_series": set(),
    "trike_engine_active_series": set(),
    "trike_engine_window_bytes": set(),
    "trike_engine_queue_observations": set(),
    "trike_engine_queue_capacity_observations": set(),
    "trike_engine_queue_delay_seconds": set(),
    "trike_engine_late_dropped_total": set(),
    "trike_engine_overflowed_total": set(),
    "trike_engine_requests_applied_total": set(),
    "trike_decisions_total": {"action"},
    "trike_policy_held_total": {"reason"},
    "trike_sink_dropped_total": set(),
    "trike_sink_errors_total": set(),
    "trike_kafka_consumer_lag_messages": {"topic", "partition"},
    "trike_kafka_source_messages_total": set(),
    "trike_kafka_source_undecodable_total": set(),
    "trike_kafka_source_paused_partitions": set(),
    "trike_kafka_control_delivered_total": set(),
    "trike_kafka_control_failed_total": set(),
    "trike_checkpoint_failures_total": set(),
    "trike_checkpoint_duration_seconds": set(),
    "trike_sli_requests": {"service", "window"},
    "trike_sli_error_ratio": {"service", "window"},
    "trike_sli_rate_per_second": {"service", "window"},
    "trike_sli_latency_milliseconds": {"service", "window", "quantile"},
}
HISTOGRAMS = {"trike_engine_queue_delay_seconds"}
# Labels Prometheus adds when scraping (target labels from the ServiceMonitor).
TARGET_LABELS = {"instance", "job", "pod", "namespace", "container", "endpoint"}
# What the dashboard must show (the panels asked for), by the metric each one needs.
DASHBOARD_REQUIRED = [
    "trike_sli_rate_per_second",
    "trike_sli_error_ratio",
    "trike_sli_latency_milliseconds",
    "trike_decisions_total",
    "trike_policy_held_total",
    "trike_engine_queue_observations",
    "trike_engine_queue_capacity_observations",
    "trike_engine_queue_delay_seconds_bucket",
    "trike_receiver_items_rejected_total",
    "trike_kafka_consumer_lag_messages",
    "trike_kafka_control_failed_total",
    "trike_checkpoint_failures_total",
]

# Config keys Trike accepts that deploy/config/trike.yaml does not spell out (src/config/mod.rs,
# src/actuate/config.rs, sinks SinkConfig). `[]` marks list items.
EXTRA_KEYS = {
    "signing", "signing.key_env", "signing.key",
    # Commented out in trike.yaml (its files must exist where Trike runs).
    "tls", "tls.cert_file", "tls.key_file", "tls.client_ca_file",
    "fleet.ca_file", "fleet.server_name",
    "canary[].error_tolerance", "canary[].latency_tolerance",
    "policies[].max_actions", "policies[].max_actions_window", "policies[].severity",
    "policies[].act_on_stale",
    "slos[].tiers[].disabled",
    "actuator.executors[].method",
    "sinks[].path",
}
# Maps whose keys are names chosen by the user.
FREE_MAPS = {"engine.signal_source_per_service", "policies[].params", "actuator.executors[].headers"}
EXECUTOR_KEYS = {
    "common": {"name", "type", "actions", "services", "timeout"},
    "webhook": {"url", "method", "body", "headers", "retries"},
    "command": {"argv"},
    "log": set(),
}
SINK_KEYS = {"stdout": set(), "kafka": set(), "file": {"path"}}
ACTIONS = {"rollback", "set_weight", "throttle", "page", "ticket", "freeze_deploys", "promote", "resolved"}
SPAN_RE = re.compile(r"^(\d+[smhdw])+$")
SPAN_KEYS = {"timeout", "for", "cooldown", "window", "period", "checkpoint_every", "after",
             "max_lag", "allowed_lateness", "long", "short", "max_actions_window"}

CRD_KINDS = {"ServiceMonitor"}


class Checks:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs one check; AssertionError (or any exception) is a failure with its message."""
        try:
            out = fn()
        except AssertionError as e:
            self.failed += 1
            self.say(f"FAIL {name}: {e}")
            return None
        except Exception as e:  # noqa: BLE001 - any crash of a check is a failed check
            self.failed += 1
            msg = getattr(e, "message", None) or str(e) or type(e).__name__
            self.say(f"FAIL {name}: {type(e).__name__}: {msg}")
            if "--debug" in sys.argv:
                traceback.print_exc()
            return None
        self.passed += 1
        self.say(f"ok   {name}")
        return out

    @staticmethod
    def say(line: str) -> None:
        """One line per check: messages from Helm carry newlines and tabs."""
        print(" ".join(line.split()), flush=True)


# ----------------------------------------------------------------------------------------
# Trike config keys
# ----------------------------------------------------------------------------------------

def key_paths(node: Any, prefix: str = "") -> set[str]:
    """Every key path in a YAML tree; list items become `[]`; free-form maps stop the walk."""
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            out.add(p)
            if p not in FREE_MAPS:
                out |= key_paths(v, p)
    elif isinstance(node, list):
        for item in node:
            out |= key_paths(item, prefix + "[]")
    return out


def known_keys(reference: Path) -> set[str]:
    return key_paths(yaml.safe_load(reference.read_text())) | EXTRA_KEYS


def check_trike_config(cfg: Any, known: set[str]) -> None:
    """Keys Trike knows, executor and sink shapes, action names, span syntax."""
    assert isinstance(cfg, dict), f"top level is {type(cfg).__name__}, not a mapping"
    unknown = sorted(key_paths(cfg) - known)
    assert not unknown, f"keys Trike does not know (it refuses to start): {unknown}"
    problems: list[str] = []

    def spans(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                p = f"{path}.{k}" if path else str(k)
                if k in SPAN_KEYS and not isinstance(v, (dict, list)) and p not in FREE_MAPS:
                    if not (isinstance(v, str) and SPAN_RE.match(v)):
                        problems.append(f"{p}: {v!r} is not a duration like 30s, 10m, 1h")
                if p not in FREE_MAPS:
                    spans(v, p)
        elif isinstance(node, list):
            for i, item in enumerate(node):
                spans(item, f"{path}[{i}]")

    spans(cfg, "")
    for i, ex in enumerate(((cfg.get("actuator") or {}).get("executors")) or []):
        f = f"actuator.executors[{i}]"
        kind = ex.get("type")
        if kind not in EXECUTOR_KEYS or kind == "common":
            problems.append(f"{f}.type: {kind!r} is not webhook, command or log")
            continue
        extra = set(ex) - EXECUTOR_KEYS["common"] - EXECUTOR_KEYS[kind]
        if extra:
            problems.append(f"{f}: keys {sorted(extra)} do not belong to a {kind} executor")
        for key in ("name", "actions"):
            if key not in ex:
                problems.append(f"{f}.{key}: missing")
        bad = [a for a in ex.get("actions") or [] if a not in ACTIONS]
        if bad or not ex.get("actions"):
            problems.append(f"{f}.actions: {ex.get('actions')!r} (valid: {sorted(ACTIONS)})")
        if kind == "webhook" and not str(ex.get("url", "")).startswith(("http://", "https://")):
            problems.append(f"{f}.url: {ex.get('url')!r} is not an http(s) URL")
        if kind == "command" and not (isinstance(ex.get("argv"), list) and ex["argv"]):
            problems.append(f"{f}.argv: must name a program")
        for h, v in (ex.get("headers") or {}).items():
            if not isinstance(v, str):
                problems.append(f"{f}.headers.{h}: must be a string")
    for i, s in enumerate(cfg.get("sinks") or []):
        kind = s.get("type") if isinstance(s, dict) else None
        if kind not in SINK_KEYS:
            problems.append(f"sinks[{i}].type: {kind!r} is not stdout, file or kafka")
        elif set(s) - {"type"} - SINK_KEYS[kind]:
            problems.append(f"sinks[{i}]: keys {sorted(set(s) - {'type'} - SINK_KEYS[kind])} do not belong to {kind}")
        if kind == "kafka" and not (cfg.get("kafka") or {}).get("brokers"):
            problems.append(f"sinks[{i}]: type kafka needs kafka.brokers")
    for i, r in enumerate(cfg.get("policies") or []):
        if r.get("action") not in ACTIONS - {"resolved"}:
            problems.append(f"policies[{i}].action: {r.get('action')!r}")
    assert not problems, "; ".join(problems)


# ----------------------------------------------------------------------------------------
# Helm
# ----------------------------------------------------------------------------------------

def parse_manifests(manifests: dict[str, str]) -> list[tuple[str, dict]]:
    docs: list[tuple[str, dict]] = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            docs.append((path, doc))
    return docs


def by_kind(docs: list[tuple[str, dict]], kind: str) -> list[dict]:
    return [d for _, d in docs if d.get("kind") == kind]


def one(docs: list[tuple[str, dict]], kind: str, name: str | None = None) -> dict:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}"
    return found[0]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_service_monitor(doc: dict, docs: list[tuple[str, dict]]) -> None:
    assert doc.get("apiVersion") == "monitoring.coreos.com/v1", f"apiVersion {doc.get('apiVersion')}"
    assert doc.get("kind") == "ServiceMonitor"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"unexpected top-level keys {sorted(set(doc))}"
    assert doc["metadata"].get("name"), "metadata.name missing"
    spec = doc.get("spec") or {}
    sel = (spec.get("selector") or {}).get("matchLabels")
    assert sel, "spec.selector.matchLabels missing"
    eps = spec.get("endpoints") or []
    assert eps, "spec.endpoints missing"
    assert eps[0].get("port") == "admin", f"spec.endpoints[0].port is {eps[0].get('port')!r}, not admin"
    assert eps[0].get("path", "/metrics") == "/metrics", f"path {eps[0].get('path')!r}"
    allowed_ep = {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                  "metricRelabelings", "honorLabels", "tlsConfig"}
    assert set(eps[0]) <= allowed_ep, f"unexpected endpoint keys {sorted(set(eps[0]) - allowed_ep)}"
    services = [s for s in by_kind(docs, "Service") if matches(sel, s["metadata"].get("labels", {}))]
    assert len(services) == 1, f"selector matches {len(services)} Services (want exactly one: no double scrape)"
    ports = [p.get("name") for p in services[0]["spec"]["ports"]]
    assert "admin" in ports, f"Service {services[0]['metadata']['name']} has no port named admin"


def check_workload(doc: dict, docs: list[tuple[str, dict]]) -> None:
    """Selectors, ports, probes, volumes and security of a StatefulSet or Deployment."""
    spec = doc["spec"]
    tmpl = spec["template"]
    labels = tmpl["metadata"].get("labels", {})
    assert matches(spec["selector"]["matchLabels"], labels), "selector does not match the pod labels"
    pod = tmpl["spec"]
    psc = pod.get("securityContext", {})
    assert psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot is not true"
    assert psc.get("runAsUser", 0) != 0, "pod runs as uid 0"
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    assert not (set(volumes) & claims), f"volumes and claim templates share names {set(volumes) & claims}"
    configmaps = {c["metadata"]["name"] for c in by_kind(docs, "ConfigMap")}
    for v in volumes.values():
        if "configMap" in v:
            assert v["configMap"]["name"] in configmaps, f"volume {v['name']}: no ConfigMap {v['configMap']['name']}"
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        assert sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem is not true"
        assert sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation is not false"
        assert "ALL" in (sc.get("capabilities", {}).get("drop") or []), f"{c['name']}: capabilities not dropped"
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{c['name']}: may run as root"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes or m["name"] in claims, f"{c['name']}: mount {m['name']} has no volume"
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(kind)
            if probe and "httpGet" in probe:
                assert probe["httpGet"]["port"] in ports or isinstance(probe["httpGet"]["port"], int), \
                    f"{c['name']}: {kind} port {probe['httpGet']['port']} is not a container port"
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                assert ref.get("name") and ref.get("key"), f"{c['name']}: env {e['name']} secretKeyRef incomplete"


def check_processor(docs: list[tuple[str, dict]], persistence: bool, fleet: bool = False) -> None:
    sts = one(docs, "StatefulSet")
    check_workload(sts, docs)
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"].get("clusterIP") == "None", "serviceName does not name a headless Service"
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    want_args = ["run", "--role", "processor"] if fleet else ["run"]
    assert c["args"][:len(want_args)] == want_args and "--role" not in c["args"][len(want_args):], f"args {c['args']}"
    cfg_path = c["args"][c["args"].index("--config") + 1]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if fleet:
        # A processor opens no OTLP port (DESIGN §6).
        assert set(ports) == {"admin"}, f"processor container ports {sorted(ports)}"
    else:
        assert {"otlp-grpc", "otlp-http", "admin"} <= set(ports), f"container ports {sorted(ports)}"
    def probe(kind: str) -> dict:
        g = dict(c[kind]["httpGet"])
        return {k: g[k] for k in ("path", "port")} | ({"scheme": g["scheme"]} if "scheme" in g else {})
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    for svc in by_kind(docs, "Service"):
        if matches(svc["spec"]["selector"], pod_labels):
            for p in svc["spec"]["ports"]:
                assert p["targetPort"] in ports, f"Service {svc['metadata']['name']} targets unknown port {p['targetPort']}"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = one(docs, "ConfigMap", volumes[mounts[str(Path(cfg_path).parent)]]["configMap"]["name"])
    cfg = yaml.safe_load(cm["data"][Path(cfg_path).name])
    https = {"scheme": "HTTPS"} if cfg.get("tls") else {}
    assert probe("livenessProbe") == {"path": "/healthz", "port": "admin"} | https, "liveness is not /healthz on admin"
    assert probe("readinessProbe") == {"path": "/readyz", "port": "admin"} | https, "readiness is not /readyz on admin"
    assert probe("startupProbe") == {"path": "/healthz", "port": "admin"} | https, "startup is not /healthz on admin"
    # TLS: the config's files are in a mounted Secret.
    for field in ("cert_file", "key_file", "client_ca_file"):
        path = (cfg.get("tls") or {}).get(field)
        if path:
            mount = str(Path(path).parent)
            assert mount in mounts, f"tls.{field} {path} is not in a mounted volume"
            assert "secret" in volumes[mounts[mount]], f"tls.{field}: volume {mounts[mount]} is not a Secret"
    state_dir = (cfg.get("state") or {}).get("dir")
    assert state_dir in mounts, f"state.dir {state_dir} is not a mounted volume"
    data = mounts[state_dir]
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if persistence:
        assert data in claims, f"state.dir volume {data} is not a volumeClaimTemplate"
    else:
        assert not claims, "persistence disabled but volumeClaimTemplates rendered"
        assert "emptyDir" in volumes.get(data, {}), f"state.dir volume {data} is not an emptyDir"
    if fleet:
        # Static membership from the pod name: unique per processor, stable across restarts.
        assert ((cfg.get("kafka") or {}).get("ingest") or {}).get("group_instance_id") == "${POD_NAME}", \
            "processors' kafka.ingest.group_instance_id is not ${POD_NAME}"
        env = {e["name"]: e for e in c.get("env", [])}
        assert env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name", \
            "POD_NAME is not the pod's name"
        assert (cfg.get("kafka") or {}).get("brokers"), "fleet mode needs kafka.brokers"
        check_advertised(cfg, env)
    check_listen(cfg, ports, ["admin"] if fleet else ["otlp-grpc", "otlp-http", "admin"])


def check_advertised(cfg: dict, env: dict) -> None:
    """Fleet members advertise their admin API at the pod IP, on the admin port; under TLS as
    https://, trusting the Secret's CA and checking each other's certificate against the
    Service's name (a pod IP is rarely in a certificate)."""
    fleet = cfg.get("fleet") or {}
    url = fleet.get("advertise_url", "")
    port = str(cfg.get("admin", "")).rsplit(":", 1)[-1]
    scheme = "https" if cfg.get("tls") else "http"
    assert re.fullmatch(scheme + r"://\$\{POD_IP\}:" + re.escape(port), url), \
        f"fleet.advertise_url {url!r} is not {scheme}:// at the pod IP on the admin port {port}"
    if cfg.get("tls"):
        tls_dir = str(Path(cfg["tls"]["cert_file"]).parent)
        assert str(Path(fleet.get("ca_file", "")).parent) == tls_dir, \
            f"fleet.ca_file {fleet.get('ca_file')!r} is not in the TLS Secret's mount {tls_dir}"
        assert fleet.get("server_name") == RELEASE, \
            f"fleet.server_name {fleet.get('server_name')!r} is not the Service's name {RELEASE}"
    assert env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "status.podIP", \
        "POD_IP is not the pod's IP"


def check_listen(cfg: dict, ports: dict, names: list[str]) -> None:
    """Listen addresses: reachable from outside the pod, and the container ports are theirs."""
    addrs = {"otlp-grpc": (cfg.get("receivers") or {}).get("otlp_grpc"),
             "otlp-http": (cfg.get("receivers") or {}).get("otlp_http"),
             "admin": cfg.get("admin")}
    addrs = {n: addrs[n] for n in names}
    for name, addr in addrs.items():
        assert isinstance(addr, str) and addr.startswith(("0.0.0.0:", "[::]:")), \
            f"{name} listens on {addr!r}, not 0.0.0.0 (unreachable in a container)"
        assert int(addr.rsplit(":", 1)[1]) == ports[name], f"{name}: config port {addr} != containerPort {ports[name]}"


def check_gateway(docs: list[tuple[str, dict]]) -> None:
    """Fleet mode: the gateway Deployment, its autoscaler, and the client Service selecting it."""
    dep = one(docs, "Deployment", f"{RELEASE}-gateway")
    check_workload(dep, docs)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:3] == ["run", "--role", "gateway"], f"args {c['args']}"
    cfg_path = c["args"][c["args"].index("--config") + 1]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {"otlp-grpc", "otlp-http", "admin"} <= set(ports), f"gateway container ports {sorted(ports)}"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", "gateway readiness is not /readyz"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = one(docs, "ConfigMap", volumes[mounts[str(Path(cfg_path).parent)]]["configMap"]["name"])
    cfg = yaml.safe_load(cm["data"][Path(cfg_path).name])
    check_listen(cfg, ports, ["otlp-grpc", "otlp-http", "admin"])
    check_advertised(cfg, {e["name"]: e for e in c.get("env", [])})
    labels = dep["spec"]["template"]["metadata"]["labels"]
    sts_labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    client = one(docs, "Service", RELEASE)
    assert matches(client["spec"]["selector"], labels), "the client Service does not select the gateways"
    assert not matches(client["spec"]["selector"], sts_labels), "the client Service selects processors"
    for p in client["spec"]["ports"]:
        assert p["targetPort"] in ports, f"client Service targets unknown gateway port {p['targetPort']}"
    hpa = one(docs, "HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"]), f"HPA targets {ref}"
    assert "replicas" not in dep["spec"], "an autoscaled Deployment must not pin replicas"
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def check_actuator(docs: list[tuple[str, dict]]) -> None:
    dep = one(docs, "Deployment", f"{RELEASE}-actuator")
    check_workload(dep, docs)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"][:1] == ["actuate"], f"args {c['args']}"
    cfg_path = c["args"][c["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = one(docs, "ConfigMap", volumes[mounts[str(Path(cfg_path).parent)]]["configMap"]["name"])
    cfg = yaml.safe_load(cm["data"][Path(cfg_path).name])
    env = {e["name"] for e in c.get("env", [])}
    assert (cfg.get("kafka") or {}).get("brokers") or "TRIKE_KAFKA_BROKERS" in env, "no Kafka brokers"
    state_dir = (cfg.get("actuator") or {}).get("state_dir")
    assert state_dir in mounts, f"actuator.state_dir {state_dir} is not a mounted volume"
    assert "emptyDir" in volumes[mounts[state_dir]], "actuator.state_dir is not an emptyDir"


def rendered_configs(docs: list[tuple[str, dict]]) -> dict[str, Any]:
    out = {}
    for cm in by_kind(docs, "ConfigMap"):
        for key, text in (cm.get("data") or {}).items():
            out[f"{cm['metadata']['name']}/{key}"] = yaml.safe_load(text)
    return out


SCENARIOS: list[tuple[str, dict, dict]] = [
    # name, values, expectations
    ("default", {}, {"persistence": True, "servicemonitor": True}),
    ("tls",
     {"tls": {"existingSecret": "trike-tls", "clientCA": True},
      "serviceMonitor": {"tlsConfig": {"insecureSkipVerify": True}}},
     {"persistence": True, "servicemonitor": True}),
    ("fleet",
     {"fleet": {"enabled": True}, "replicaCount": 3},
     {"persistence": True, "servicemonitor": True, "fleet": True}),
    ("fleet-tls",
     {"fleet": {"enabled": True}, "replicaCount": 3,
      "tls": {"existingSecret": "trike-tls", "clientCA": True},
      "serviceMonitor": {"tlsConfig": {"insecureSkipVerify": True}}},
     {"persistence": True, "servicemonitor": True, "fleet": True}),
    ("no-persistence-no-servicemonitor",
     {"persistence": {"enabled": False}, "serviceMonitor": {"enabled": False}},
     {"persistence": False, "servicemonitor": False}),
    ("all-options",
     {
         "replicaCount": 1,
         "signing": {"existingSecret": "trike-signing"},
         "kafkaBrokers": "kafka-0.kafka:9092,kafka-1.kafka:9092",
         "podDisruptionBudget": {"enabled": True},
         "persistence": {"storageClassName": "fast-ssd", "annotations": {"a": "b"}},
         "serviceMonitor": {"labels": {"release": "kube-prometheus-stack"},
                            "metricRelabelings": [{"action": "drop", "regex": "trike_engine_window_bytes",
                                                   "sourceLabels": ["__name__"]}]},
         "extraEnv": [{"name": "EXTRA", "value": "1"}],
         "imagePullSecrets": [{"name": "regcred"}],
         "nodeSelector": {"kubernetes.io/os": "linux"},
         "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "observability", "effect": "NoSchedule"}],
         "actuator": {
             "image": {"repository": "registry.example/trike-kubectl", "tag": "0.1.0-kubectl"},
             "extraEnv": [{"name": "PAGER_AUTHORIZATION",
                           "valueFrom": {"secretKeyRef": {"name": "trike-webhooks", "key": "pager-authorization"}}}],
             "extraEnvFrom": [{"secretRef": {"name": "trike-webhooks"}}],
             "rbac": {"create": True, "rules": [{"apiGroups": ["argoproj.io"], "resources": ["rollouts"],
                                                 "verbs": ["get", "list", "watch", "patch", "update"]}]},
             "config": {
                 "kafka": {"brokers": "kafka:9092", "control_topic": "trike.control"},
                 "actuator": {
                     "group_id": "trike-actuators", "state_dir": "/var/lib/trike-actuator",
                     "breaker_failures": 3,
                     "executors": [
                         {"name": "argo-abort", "type": "command", "actions": ["rollback"],
                          "services": ["checkout*"], "timeout": "30s",
                          "argv": ["kubectl", "argo", "rollouts", "abort", "checkout", "-n", "shop"]},
                         {"name": "pager", "type": "webhook", "actions": ["page", "ticket"],
                          "url": "http://alert-bridge.observability.svc:8080/trike",
                          "headers": {"Authorization": "env:PAGER_AUTHORIZATION"}, "retries": 5,
                          "timeout": "5s"},
                         {"name": "audit", "type": "log", "actions": ["resolved"]},
                     ],
                 },
             },
         },
     },
     {"persistence": True, "servicemonitor": True, "pdb": True, "rbac": True}),
]


# Where rendered Trike configs are written (`--dump-configs DIR`), if anywhere.
DUMP_CONFIGS: Path | None = None


def helm_checks(ck: Checks, chart: Path, known: set[str], kube: str) -> dict | None:
    def lint() -> None:
        report = helm.lint(str(chart), strict=True, namespace=NAMESPACE)
        bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        assert not bad and not report.get("errors"), \
            "; ".join(f"[{m['severity']}] {m['path']}: {m['error']}" for m in bad) + "; ".join(report.get("errors") or [])

    ck.run("helm lint --strict", lint)
    default_cfg = None
    c = ck.run("chart loads", lambda: helm.Chart.load(str(chart)))
    if c is None:
        return None
    with c:
        for scenario, values, expect in SCENARIOS:
            tag = f"render[{scenario}]"
            manifests = ck.run(f"{tag} renders", lambda: c.render(values, name=RELEASE, namespace=NAMESPACE))
            if manifests is None:
                continue
            docs = ck.run(f"{tag} parses as YAML", lambda: parse_manifests(manifests))
            if docs is None:
                continue

            def unique() -> None:
                seen: dict[tuple, str] = {}
                for path, d in docs:
                    k = (d["kind"], d["metadata"]["name"])
                    assert k not in seen, f"{k} in both {seen[k]} and {path}"
                    seen[k] = path
                    assert d["metadata"].get("namespace") == NAMESPACE, f"{k} lacks namespace {NAMESPACE}"
                    labels = d["metadata"].get("labels") or {}
                    for want in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                                 "app.kubernetes.io/managed-by", "app.kubernetes.io/component"):
                        assert want in labels, f"{k} lacks label {want}"

            ck.run(f"{tag} objects unique, namespaced, labelled", unique)
            for path, d in docs:
                name = f"{tag} {d.get('kind')}/{d.get('metadata', {}).get('name')}"
                if d.get("kind") in CRD_KINDS:
                    ck.run(f"{name} (CRD: structure, selects the admin port)",
                           lambda d=d: check_service_monitor(d, docs))
                else:
                    ck.run(f"{name} valid against Kubernetes {kube} (strict)",
                           lambda d=d: kubernetes_validate.validate(d, kube, strict=True))

            def kinds() -> None:
                have = sorted(d["kind"] for _, d in docs)
                fleet = 1 if expect.get("fleet") else 0
                assert have.count("StatefulSet") == 1 and have.count("Deployment") == 1 + fleet, have
                assert have.count("HorizontalPodAutoscaler") == fleet, have
                assert have.count("Service") == 2 and have.count("ConfigMap") == 2, have
                assert have.count("ServiceMonitor") == (1 if expect["servicemonitor"] else 0), have
                assert have.count("PodDisruptionBudget") == (2 if expect.get("pdb") else 0), have
                assert have.count("Role") == have.count("RoleBinding") == (1 if expect.get("rbac") else 0), have

            ck.run(f"{tag} renders the expected objects", kinds)
            ck.run(f"{tag} processor: selectors, ports, probes, volumes, security, listen addresses",
                   lambda: check_processor(docs, expect["persistence"], expect.get("fleet", False)))
            if expect.get("fleet"):
                ck.run(f"{tag} gateway: Deployment, autoscaler, client Service", lambda: check_gateway(docs))
            ck.run(f"{tag} actuator: selectors, volumes, security, brokers", lambda: check_actuator(docs))
            configs = ck.run(f"{tag} ConfigMap trike.yaml and actuator.yaml parse", lambda: rendered_configs(docs))
            for key, cfg in (configs or {}).items():
                ck.run(f"{tag} config {key}: keys and values Trike accepts",
                       lambda cfg=cfg: check_trike_config(cfg, known))
            if DUMP_CONFIGS is not None:
                # For the Rust test, which validates them with Trike's own config validator.
                for key, cfg in (configs or {}).items():
                    out = DUMP_CONFIGS / f"{scenario}--{key.replace('/', '--')}"
                    out.write_text(yaml.safe_dump(cfg))
            if scenario == "default" and configs:
                default_cfg = next((v for k, v in configs.items() if k.endswith("/trike.yaml")), None)
            if expect.get("rbac"):
                def rbac() -> None:
                    dep = one(docs, "Deployment", f"{RELEASE}-actuator")
                    rb = one(docs, "RoleBinding")
                    assert rb["subjects"][0]["name"] == dep["spec"]["template"]["spec"]["serviceAccountName"]
                    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
                ck.run(f"{tag} actuator RBAC bound to its ServiceAccount, token mounted", rbac)

    # The chart must refuse one static-membership id shared by several replicas.
    def refuses_shared_instance_id() -> None:
        with helm.Chart.load(str(chart)) as c:
            try:
                c.render({"replicaCount": 2, "config": {"kafka": {"ingest": {"group_instance_id": "trike-0"}}}},
                         name=RELEASE, namespace=NAMESPACE)
            except helm.HelmError as e:
                assert "group_instance_id" in str(e), f"failed for another reason: {e}"
                return
        raise AssertionError("rendered a group_instance_id shared by 2 replicas")

    ck.run("chart refuses a group_instance_id shared by replicas", refuses_shared_instance_id)
    return default_cfg


# ----------------------------------------------------------------------------------------
# Grafana
# ----------------------------------------------------------------------------------------

METRIC_RE = re.compile(r"\btrike_[a-z0-9_]+")
SELECTOR_RE = re.compile(r"\b(trike_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)")
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def base_metric(name: str) -> str | None:
    if name in METRICS:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            return name[: -len(suffix)]
    return None


def check_expr(expr: str) -> set[str]:
    names = set(METRIC_RE.findall(expr))
    unknown = sorted(n for n in names if base_metric(n) is None)
    assert not unknown, f"unknown metrics {unknown} in {expr!r}"
    allowed = set(TARGET_LABELS)
    for n in names:
        allowed |= METRICS[base_metric(n)]
        if n.endswith("_bucket"):
            allowed.add("le")
    for metric, body in SELECTOR_RE.findall(expr):
        for label, _ in MATCHER_RE.findall(body):
            assert label in allowed, f"{metric} has no label {label!r} (expr {expr!r})"
    for group in GROUPING_RE.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            assert label in allowed, f"grouping by {label!r}, which none of {sorted(names)} has (expr {expr!r})"
    return names


def grafana_checks(ck: Checks, path: Path) -> None:
    dash = ck.run(f"grafana {path.name} parses as JSON", lambda: json.loads(path.read_text()))
    if dash is None:
        return

    def basics() -> None:
        assert dash.get("schemaVersion") == 39, f"schemaVersion {dash.get('schemaVersion')}"
        assert dash.get("uid") and dash.get("title"), "uid/title missing"
        vars_ = {v["name"]: v for v in dash["templating"]["list"]}
        ds = vars_.get("datasource")
        assert ds and ds["type"] == "datasource" and ds["query"] == "prometheus", "no Prometheus datasource variable"
        svc = vars_.get("service")
        assert svc, "no service variable"
        q = svc["query"]["query"] if isinstance(svc["query"], dict) else svc["query"]
        assert q == "label_values(trike_sli_requests, service)", f"service variable query {q!r}"
        assert svc["datasource"]["uid"] == "${datasource}", "service variable does not use ${datasource}"
        check_expr(q)

    ck.run("grafana schemaVersion 39, ${datasource} and service variables", basics)

    def panels() -> None:
        flat = []
        for p in dash["panels"]:
            flat.append(p)
            flat.extend(p.get("panels", []))
        ids = [p["id"] for p in flat]
        assert len(ids) == len(set(ids)), "duplicate panel ids"
        referenced: set[str] = set()
        for p in flat:
            if p["type"] == "row":
                continue
            assert p.get("gridPos"), f"panel {p['title']!r} has no gridPos"
            assert p.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']!r} datasource"
            assert p.get("targets"), f"panel {p['title']!r} has no queries"
            for t in p["targets"]:
                assert t.get("datasource", {}).get("uid") == "${datasource}", f"panel {p['title']!r} target datasource"
                referenced |= check_expr(t["expr"])
        missing = [m for m in DASHBOARD_REQUIRED if m not in referenced]
        assert not missing, f"no panel queries {missing}"

    ck.run("grafana panels query only metrics and labels Trike exports, and cover the required panels", panels)


# ----------------------------------------------------------------------------------------
# OpenTelemetry Collector
# ----------------------------------------------------------------------------------------

def collector_checks(ck: Checks, path: Path, trike_cfg: dict | None) -> None:
    col = ck.run(f"collector {path.name} parses as YAML", lambda: yaml.safe_load(path.read_text()))
    if col is None:
        return

    def pipelines() -> None:
        pls = col["service"]["pipelines"]
        assert pls, "no pipelines"
        for name, pl in pls.items():
            signal = name.split("/")[0]
            assert signal in {"traces", "metrics", "logs"}, f"pipeline {name}: unknown signal"
            for section, key in (("receivers", "receivers"), ("processors", "processors"), ("exporters", "exporters")):
                for comp in pl.get(key, []):
                    assert comp in (col.get(section) or {}), f"pipeline {name}: {section[:-1]} {comp} is not defined"
            assert pl.get("receivers") and pl.get("exporters"), f"pipeline {name} lacks receivers or exporters"

    ck.run("collector pipelines reference defined components", pipelines)

    def exporters() -> None:
        ex = col["exporters"]
        otlp = [v for k, v in ex.items() if k.split("/")[0] == "otlp"]
        assert otlp, "no otlp exporter to Trike"
        assert otlp[0]["endpoint"].endswith(":4317"), f"otlp endpoint {otlp[0]['endpoint']}"
        assert otlp[0].get("tls", {}).get("insecure") is True, "otlp exporter needs tls.insecure: true (Trike serves plain gRPC)"
        kafka = [v for k, v in ex.items() if k.split("/")[0] == "kafka"]
        assert kafka, "no kafka exporter"
        k = kafka[0]
        assert k.get("brokers"), "kafka exporter: brokers missing"
        assert k["traces"]["topic"] == "otlp_spans" and k["metrics"]["topic"] == "otlp_metrics", "kafka topics"
        for sig in ("traces", "metrics"):
            assert k[sig].get("encoding", "otlp_proto") == "otlp_proto", f"kafka {sig}.encoding is not otlp_proto"
        if trike_cfg is not None:
            topics = ((trike_cfg.get("kafka") or {}).get("ingest") or {}).get("topics") or []
            for t in (k["traces"]["topic"], k["metrics"]["topic"]):
                assert t in topics, f"Trike's chart config does not consume {t} (kafka.ingest.topics {topics})"

    ck.run("collector exporters: otlp -> trike:4317 insecure; kafka otlp_proto to Trike's topics", exporters)

    def no_double_count() -> None:
        ex = col["exporters"]
        direct, via_kafka = set(), set()
        for name, pl in col["service"]["pipelines"].items():
            signal = name.split("/")[0]
            for e in pl["exporters"]:
                kind = e.split("/")[0]
                if kind == "otlp" and ":4317" in str(ex[e].get("endpoint", "")):
                    direct.add(signal)
                if kind == "kafka":
                    via_kafka.add(signal)
        both = direct & via_kafka
        assert not both, f"{sorted(both)} reach Trike both directly and through Kafka: counted twice"

    ck.run("collector sends each signal to Trike one way only", no_double_count)


# ----------------------------------------------------------------------------------------
# Dockerfile
# ----------------------------------------------------------------------------------------

def docker_checks(ck: Checks, path: Path, repo_root: Path) -> None:
    def dockerfile() -> None:
        text = path.read_text().replace("\\\n", " ")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
        froms = [(i, a) for i, (op, a) in enumerate(instr) if op == "FROM"]
        assert len(froms) >= 2, f"{len(froms)} FROM: not a multi-stage build"
        stages = [a.split()[-1].lower() for _, a in froms if " as " in a.lower()]
        copies = [a for op, a in instr if op == "COPY" and "--from=" in a]
        assert copies, "no COPY --from: the runtime stage does not take the build output"
        for cp in copies:
            src = re.search(r"--from=(\S+)", cp).group(1).lower()
            assert src in stages, f"COPY --from={src}: no such stage {stages}"
        assert froms[0][1].split()[0].startswith("rust:"), f"builder is {froms[0][1]}"
        assert any(op == "RUN" and "cargo build" in a and "--release" in a and "--locked" in a
                   and "--bin trike" in a for op, a in instr[: froms[-1][0]]), "builder lacks cargo build --release --locked --bin trike"
        final = instr[froms[-1][0]:]
        users = [a for op, a in final if op == "USER"]
        assert users, "final stage has no USER (runs as root)"
        user = users[-1].split(":")[0]
        assert user not in {"root", "0"}, f"USER {users[-1]} is root"
        assert any(op == "ENTRYPOINT" and "/usr/local/bin/trike" in a for op, a in final), "ENTRYPOINT is not trike"
        exposed = set(" ".join(a for op, a in final if op == "EXPOSE").split())
        assert {"4317", "4318", "8480"} <= exposed, f"EXPOSE {sorted(exposed)}"

    ck.run(f"Dockerfile multi-stage, non-root USER, trike entrypoint", dockerfile)

    def dockerignore() -> None:
        p = repo_root / ".dockerignore"
        assert p.exists(), f"{p} missing (the build context is the repository root)"
        entries = {ln.strip().strip("/") for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
        assert "target" in entries and ".git" in entries, f".dockerignore lacks target/ or .git: {sorted(entries)}"
        assert not ({"deploy", "src", "Cargo.lock", "*"} & entries), ".dockerignore excludes what the build needs"

    ck.run(".dockerignore keeps target/ and .git out of the context", dockerignore)


# ----------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--deploy-dir", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--kube-version", default="1.33")
    ap.add_argument("--debug", action="store_true", help="print tracebacks of crashed checks")
    ap.add_argument("--dump-configs", type=Path, help="write the chart's rendered Trike configs here")
    args = ap.parse_args()
    global DUMP_CONFIGS
    DUMP_CONFIGS = args.dump_configs
    deploy: Path = args.deploy_dir.resolve()
    ck = Checks()

    reference = deploy / "config" / "trike.yaml"
    known = ck.run("reference config deploy/config/trike.yaml parses", lambda: known_keys(reference))
    known = known or set()
    for f in sorted((deploy / "config").glob("*.yaml")):
        cfg = ck.run(f"config {f.name} parses", lambda f=f: yaml.safe_load(f.read_text()))
        if cfg is not None:
            ck.run(f"config {f.name}: keys and values Trike accepts", lambda cfg=cfg: check_trike_config(cfg, known))

    def section(name: str, fn: Callable[[], Any]) -> Any:
        """A crash between checks is a failure too, never a traceback without a summary."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001
            ck.failed += 1
            ck.say(f"FAIL {name}: crashed: {type(e).__name__}: {e}")
            return None

    trike_cfg = section("helm", lambda: helm_checks(ck, deploy / "helm" / "trike", known, args.kube_version))
    section("grafana", lambda: grafana_checks(ck, deploy / "grafana" / "trike-dashboard.json"))
    section("collector", lambda: collector_checks(ck, deploy / "otel-collector" / "collector.yaml", trike_cfg))
    section("docker", lambda: docker_checks(ck, deploy / "Dockerfile", deploy.parent))

    print(f"{ck.passed} passed, {ck.failed} failed", flush=True)
    return 1 if ck.failed else 0


if __name__ == "__main__":
    sys.exit(main())
