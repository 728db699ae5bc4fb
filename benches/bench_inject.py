"""Benchmark: `meshctl inject` on a 2,000-Deployment stream, against PyYAML's C load+dump.

    python benches/bench_inject.py [--deployments 2000] [--repeat 3]

Prints absolute times and ratios against baselines measured in the same run:

- inject (annotation mode, the default), inject --manual and uninject, in process;
- the same through the CLI (`python -m meshctl inject -` with the stream on stdin);
- the baseline: `yaml.load_all(CSafeLoader)` + `yaml.dump_all(CSafeDumper)` of the same stream;
- start-up: `meshctl --help` against a bare `python -c pass`.

It also checks that the output is faithful: uninject(inject(stream)) is byte-identical to the
stream, and the ConfigMaps interleaved with the Deployments come out untouched.
Targets (issue 2): inject >= 1 MiB/s and <= 1.5x the baseline; --help within 150 ms of `python -c pass`.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import yaml  # noqa: E402

from meshctl.inject import InjectOptions, inject_text, uninject_text  # noqa: E402
from meshctl.meshconfig import MeshConfig  # noqa: E402

PEM = "-----BEGIN CERTIFICATE-----\nMIIBbench\n-----END CERTIFICATE-----\n"


def deployment(i: int) -> str:
    """One Deployment as `kubectl get deploy -o yaml` prints it (managedFields omitted, as kubectl does)."""
    name = f"svc-{i:04d}"
    return f'''apiVersion: apps/v1
kind: Deployment
metadata:
  annotations:
    deployment.kubernetes.io/revision: "3"
    kubectl.kubernetes.io/last-applied-configuration: |
      {{"apiVersion":"apps/v1","kind":"Deployment","metadata":{{"annotations":{{}},"name":"{name}","namespace":"team-{i % 20}"}}}}
  creationTimestamp: "2026-11-20T10:{i % 60:02d}:00Z"
  generation: 3
  labels:
    app: {name}
    tier: backend
  name: {name}
  namespace: team-{i % 20}
  resourceVersion: "{100000 + i}"
  uid: 7f1c2d3e-{i:04d}-4a5b-8c9d-0e1f2a3b4c5d
spec:
  progressDeadlineSeconds: 600
  replicas: 2
  revisionHistoryLimit: 10
  selector:
    matchLabels:
      app: {name}
  strategy:
    rollingUpdate:
      maxSurge: 25%
      maxUnavailable: 25%
    type: RollingUpdate
  template:
    metadata:
      creationTimestamp: null
      labels:
        app: {name}
        tier: backend
    spec:
      containers:
      - env:
        - name: PORT
          value: "8080"
        - name: LOG_LEVEL
          value: info
        image: registry.example/{name}:1.{i % 7}.0
        imagePullPolicy: IfNotPresent
        livenessProbe:
          failureThreshold: 3
          httpGet:
            path: /healthz
            port: 8080
            scheme: HTTP
          periodSeconds: 10
          successThreshold: 1
          timeoutSeconds: 1
        name: app
        ports:
        - containerPort: 8080
          name: http
          protocol: TCP
        resources:
          limits:
            memory: 256Mi
          requests:
            cpu: 100m
            memory: 128Mi
        terminationMessagePath: /dev/termination-log
        terminationMessagePolicy: File
        volumeMounts:
        - mountPath: /etc/config
          name: config
          readOnly: true
      dnsPolicy: ClusterFirst
      restartPolicy: Always
      schedulerName: default-scheduler
      securityContext: {{}}
      terminationGracePeriodSeconds: 30
      volumes:
      - configMap:
          defaultMode: 420
          name: {name}-config
        name: config
status:
  availableReplicas: 2
  conditions:
  - lastTransitionTime: "2026-11-20T10:00:00Z"
    lastUpdateTime: "2026-11-20T10:00:00Z"
    message: Deployment has minimum availability.
    reason: MinimumReplicasAvailable
    status: "True"
    type: Available
  observedGeneration: 3
  readyReplicas: 2
  replicas: 2
  updatedReplicas: 2
'''


def configmap(i: int) -> str:
    return f'''# config of svc-{i:04d}
apiVersion: v1
kind: ConfigMap
metadata: {{name: svc-{i:04d}-config, namespace: team-{i % 20}}}
data:
  mode: "0644"
  enabled: "on"
  script: |
    #!/bin/sh
    exec app --port 8080
'''


def stream(n: int) -> str:
    # Every 20th document is a ConfigMap: it must pass through byte for byte.
    docs = []
    for i in range(n):
        docs.append(deployment(i))
        if i % 20 == 0:
            docs.append(configmap(i))
    return "---\n".join(docs)


def _cpu() -> float:
    # CPU time of this process and its finished children: steadier than wall time on a
    # shared 2-core machine where other test suites run at the same time.
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def best(fn, repeat: int) -> tuple[float, float, object]:
    """(best wall, best CPU, result) over *repeat* runs."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        gc.collect()
        start, cpu = time.perf_counter(), _cpu()
        result = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return min(walls), min(cpus), result


def startup(args: list[str], repeat: int) -> tuple[float, float]:
    """Median wall and CPU time of a fresh interpreter running *args*."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}
    walls, cpus = [], []
    for _ in range(repeat):
        start, cpu = time.perf_counter(), _cpu()
        subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, check=True)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployments", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    text = stream(args.deployments)
    mib = len(text.encode()) / (1 << 20)
    print(f"stream: {args.deployments} Deployments (+{(args.deployments + 19) // 20} ConfigMaps), {mib:.2f} MiB; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    w_load, c_load, docs = best(lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader)), args.repeat)
    w_dump, c_dump, _ = best(lambda: yaml.dump_all(docs, Dumper=yaml.CSafeDumper, sort_keys=False), args.repeat)
    base_wall, base_cpu = w_load + w_dump, c_load + c_dump
    print(f"baseline PyYAML C load+dump: wall {base_wall:.3f} s, cpu {base_cpu:.3f} s "
          f"({c_load:.3f} load + {c_dump:.3f} dump), {mib / base_wall:.2f} MiB/s")

    annotation = InjectOptions()
    manual = InjectOptions(manual=True, mesh=MeshConfig(trust_anchors_pem=PEM))
    rows = []  # (name, input MiB, wall, cpu)
    w, c, injected = best(lambda: inject_text(text, "bench", annotation), args.repeat)
    rows.append(("inject (annotation)", mib, w, c))
    w, c, manual_out = best(lambda: inject_text(text, "bench", manual), args.repeat)
    rows.append(("inject --manual", mib, w, c))
    manual_mib = len(manual_out.text.encode()) / (1 << 20)
    w, c, uninjected = best(lambda: uninject_text(manual_out.text, "bench"), args.repeat)
    rows.append(("uninject (of the --manual output)", manual_mib, w, c))
    w, c, reinjected = best(lambda: inject_text(injected.text, "bench", annotation), args.repeat)
    rows.append(("re-inject (idempotent)", mib, w, c))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}
    data = text.encode()

    def cli():
        return subprocess.run([sys.executable, "-m", "meshctl", "inject", "-"], input=data, env=env,
                              capture_output=True, check=True)

    w, c, proc = best(cli, args.repeat)
    rows.append(("CLI: meshctl inject - (new process)", mib, w, c))

    # `kubectl get deploy -A -o yaml` prints one `kind: List` document: the same
    # Deployments as a single document, with its own baseline.
    items = [d for d in docs if d.get("kind") == "Deployment"]
    list_text = yaml.dump({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}},
                          Dumper=yaml.CSafeDumper, sort_keys=True)
    list_mib = len(list_text.encode()) / (1 << 20)
    lw_load, lc_load, list_docs = best(lambda: list(yaml.load_all(list_text, Loader=yaml.CSafeLoader)), args.repeat)
    lw_dump, lc_dump, _ = best(lambda: yaml.dump_all(list_docs, Dumper=yaml.CSafeDumper, sort_keys=False), args.repeat)
    print(f"baseline for the List: wall {lw_load + lw_dump:.3f} s, cpu {lc_load + lc_dump:.3f} s")
    w, c, list_out = best(lambda: inject_text(list_text, "bench", annotation), args.repeat)
    list_row = ("inject, one kind: List document", list_mib, w, c)

    # Ratios per MiB against the baseline's CPU time per MiB (uninject reads the larger --manual output).
    print(f"{'':36s} {'input':>9s} {'wall':>8s} {'cpu':>8s} {'MiB/s':>6s} {'ratio':>6s}")
    for name, size, w, c in rows:
        ratio = (c / size) / (base_cpu / mib)
        print(f"{name:36s} {size:6.2f} MiB {w:7.3f}s {c:7.3f}s {size / w:6.2f} {ratio:5.2f}x")
    name, size, w, c = list_row
    print(f"{name:36s} {size:6.2f} MiB {w:7.3f}s {c:7.3f}s {size / w:6.2f} {c / (lc_load + lc_dump):5.2f}x "
          "(of the List's own baseline)")

    faithful = (uninject_text(injected.text, "bench").text == text and uninjected.text == text
                and uninject_text(list_out.text, "bench").text == list_text
                and reinjected.text == injected.text and proc.stdout.decode() == injected.text)
    pieces = injected.text.split("---\n")
    untouched = all(p in pieces for p in text.split("---\n") if "kind: ConfigMap" in p)
    print(f"faithful: uninject(inject(x)) == x byte for byte, idempotent, CLI == core: {faithful}; "
          f"ConfigMaps byte-identical: {untouched}")

    w_pass, c_pass = startup(["-c", "pass"], 9)
    w_help, c_help = startup(["-m", "meshctl", "--help"], 9)
    print(f"start-up (median of 9): python -c pass {w_pass * 1000:.0f} ms wall / {c_pass * 1000:.0f} ms cpu; "
          f"meshctl --help {w_help * 1000:.0f} ms wall / {c_help * 1000:.0f} ms cpu; "
          f"difference {(w_help - w_pass) * 1000:.0f} ms wall / {(c_help - c_pass) * 1000:.0f} ms cpu (target <= 150 ms)")
    _, size, w_inj, c_inj = rows[0]
    checks = {
        "inject >= 1 MiB/s (wall)": size / w_inj >= 1.0 and list_row[1] / list_row[2] >= 1.0,
        "inject <= 1.5x baseline (cpu)": c_inj <= 1.5 * base_cpu and list_row[3] <= 1.5 * (lc_load + lc_dump),
        "--help within 150 ms of python -c pass (cpu)": c_help - c_pass <= 0.150,
        "faithful": faithful and untouched,
    }
    for what, ok in checks.items():
        print(f"{'met' if ok else 'NOT MET':8s} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
