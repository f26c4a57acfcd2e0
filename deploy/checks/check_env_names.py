#!/usr/bin/env python3
"""Starts a gateway binary with every KEEL_* variable the deployment artifacts set, and fails if
the gateway refuses one as an unknown key or an invalid value.

    python3 deploy/checks/check_env_names.py --gateway target/debug/gateway --rendered DEV.yaml PROD.yaml

The gateway refuses unknown KEEL_* keys at start-up, so a name that the artifacts assume but the
code does not have would crash every pod. The variables come from the image's ENV
(deploy/docker/Dockerfile), the gateway services of deploy/compose/compose.yaml and the
containers and ConfigMaps of the rendered Kubernetes overlays (pass them with --rendered). Each
distinct value of a variable is tried (compose and the overlays may set different ones). Secrets
are replaced by URLs of the right shape pointing at 127.0.0.1:1, so `gateway migrate` gets past
configuration and fails only when it connects: that failure is expected, a configuration error
is not.

Needs PyYAML. `.ci/deploy-checks` runs it against the debug build.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLACEHOLDERS = {
    "KEEL_DATABASE__URL": "postgres://keel:x@127.0.0.1:1/keel",
    "KEEL_DATABASE__REPLICA_URL": "postgres://keel:x@127.0.0.1:1/keel",
    "KEEL_REDIS__URL": "redis://127.0.0.1:1",
}


def dockerfile_env():
    """{KEY: VALUE} of the runtime stage's ENV instructions (continuation lines included)."""
    with open(os.path.join(ROOT, "deploy/docker/Dockerfile"), encoding="utf-8") as f:
        text = f.read().replace("\\\n", " ")
    runtime = text[text.rindex("\nFROM "):]
    env = {}
    for line in runtime.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", line)))
    return env


def compose_env():
    """[(KEY, VALUE, service)] of the compose services built from the gateway's image."""
    with open(os.path.join(ROOT, "deploy/compose/compose.yaml"), encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    env = []
    for name, svc in doc["services"].items():
        if "build" not in svc:
            continue
        for key, value in (svc.get("environment") or {}).items():
            env.append((key, re.sub(r"\$\{[^}]*\}", "x", str(value)), f"compose {name}"))
    return env


def rendered_env(path):
    """[(KEY, VALUE, object)] of the keel-config ConfigMap and the gateway containers."""
    env = []
    where = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if not doc:
                continue
            name = f"{where} {doc['kind']}/{doc['metadata']['name']}"
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].startswith("keel-config"):
                env += [(k, str(v), name) for k, v in (doc.get("data") or {}).items()]
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            if doc["kind"] in ("Deployment", "Job"):
                for container in spec.get("containers", []):
                    if container.get("image", "").split(":")[0].endswith("gateway"):
                        for item in container.get("env", []):
                            env.append((item["name"], item.get("value", "secret"), name))
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="a gateway binary")
    parser.add_argument("--rendered", nargs="*", default=[], help="`kubectl kustomize` output of the overlays")
    args = parser.parse_args(argv)
    found = [(k, v, "Dockerfile") for k, v in dockerfile_env().items()] + compose_env()
    for path in args.rendered:
        found += rendered_env(path)
    # Each distinct (name, value), with every place that sets it.
    pairs = {}
    for key, value, source in found:
        if key.startswith("KEEL_"):
            pairs.setdefault((key, PLACEHOLDERS.get(key, value)), set()).add(source)
    if not pairs:
        print("check-env-names: no KEEL_* variable found", file=sys.stderr)
        return 2
    problems = []
    base = {k: v for k, v in os.environ.items() if not k.startswith("KEEL_") and k != "RUST_LOG"}
    with tempfile.TemporaryDirectory() as tmp:
        for (name, value), sources in sorted(pairs.items()):
            # One variable at a time (with the database URL the others need), so each refusal is
            # attributed to its name and value.
            one = {"KEEL_DATABASE__URL": PLACEHOLDERS["KEEL_DATABASE__URL"], name: value}
            proc = subprocess.run([os.path.abspath(args.gateway), "migrate"], env={**base, **one}, cwd=tmp,
                                  capture_output=True, text=True, timeout=60)
            refused = "invalid configuration" in proc.stderr or "cannot set up logging" in proc.stderr
            shown = value if name not in PLACEHOLDERS else "(placeholder)"
            print(f"{'REFUSED' if refused else 'ok':8} {name}={shown}  [{', '.join(sorted(sources))}]")
            if refused:
                problems.append(f"{name}: {proc.stderr.strip().splitlines()[-1]}")
    for p in problems:
        print(p)
    names = {name for name, _ in pairs}
    print(f"check-env-names: {len(names)} KEEL_* variables, {len(pairs)} distinct values; {len(problems)} refused")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
