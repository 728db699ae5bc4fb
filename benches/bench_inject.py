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
import os
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


def best(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def startup(args: list[str], repeat: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployments", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    text = stream(args.deployments)
    mib = len(text.encode()) / (1 << 20)
    print(f"stream: {args.deployments} Deployments (+{(args.deployments + 19) // 20} ConfigMaps), {mib:.2f} MiB")

    t_load, docs = best(lambda: list(yaml.load_all(text, Loader=yaml.CSafeLoader)), args.repeat)
    t_dump, _ = best(lambda: yaml.dump_all(docs, Dumper=yaml.CSafeDumper, sort_keys=False), args.repeat)
    baseline = t_load + t_dump
    print(f"baseline PyYAML C load+dump: {baseline:.3f} s ({t_load:.3f} load + {t_dump:.3f} dump), {mib / baseline:.2f} MiB/s")

    annotation = InjectOptions()
    manual = InjectOptions(manual=True, mesh=MeshConfig(trust_anchors_pem=PEM))
    rows = []
    t, injected = best(lambda: inject_text(text, "bench", annotation), args.repeat)
    rows.append(("inject (annotation)", t))
    t, manual_out = best(lambda: inject_text(text, "bench", manual), args.repeat)
    rows.append(("inject --manual", t))
    t, uninjected = best(lambda: uninject_text(manual_out.text, "bench"), args.repeat)
    rows.append(("uninject (of --manual)", t))
    t, reinjected = best(lambda: inject_text(injected.text, "bench", annotation), args.repeat)
    rows.append(("re-inject (idempotent)", t))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1"}
    data = text.encode()

    def cli():
        return subprocess.run([sys.executable, "-m", "meshctl", "inject", "-"], input=data, env=env,
                              capture_output=True, check=True)

    t, proc = best(cli, args.repeat)
    rows.append(("CLI: meshctl inject - (process)", t))

    for name, t in rows:
        print(f"{name:34s} {t:.3f} s  {mib / t:5.2f} MiB/s  {t / baseline:.2f}x baseline")

    faithful = (uninject_text(injected.text, "bench").text == text and uninjected.text == text
                and reinjected.text == injected.text and proc.stdout.decode() == injected.text)
    pieces = injected.text.split("---\n")
    untouched = all(p in pieces for p in text.split("---\n") if "kind: ConfigMap" in p)
    print(f"faithful: uninject(inject(x)) == x byte for byte, idempotent, CLI == core: {faithful}; "
          f"ConfigMaps byte-identical: {untouched}")

    t_pass = startup(["-c", "pass"], 7)
    t_help = startup(["-m", "meshctl", "--help"], 7)
    print(f"start-up: python -c pass {t_pass * 1000:.0f} ms, meshctl --help {t_help * 1000:.0f} ms, "
          f"difference {(t_help - t_pass) * 1000:.0f} ms (target <= 150 ms)")
    t_inj = rows[0][1]
    ok = mib / t_inj >= 1.0 and t_inj <= 1.5 * baseline and t_help - t_pass <= 0.150 and faithful and untouched
    print("targets met" if ok else "TARGETS NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
