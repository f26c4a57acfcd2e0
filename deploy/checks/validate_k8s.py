#!/usr/bin/env python3
"""Validates a rendered Kubernetes manifest stream offline: custom resources here, the rest by
kubernetes-validate.

    python3 deploy/checks/validate_k8s.py RENDERED.yaml --core-out CORE.yaml
    kubernetes-validate --strict -k 1.33.0 CORE.yaml

Custom resources (KEDA ScaledObject, Prometheus Operator ServiceMonitor and PrometheusRule) are
checked against models generated from each project's own CRD schema (the cloudcoil-models-keda
and cloudcoil-models-prometheus-operator packages on PyPI): types, required fields, enums and
patterns in strict mode, then a round trip that fails on any field the schema does not know (the
API server would prune it silently). A custom resource of any other kind is an error: it would go
unchecked. Everything else is written to --core-out for kubernetes-validate.

Needs PyYAML, pydantic and the two model packages.
"""

import argparse
import json
import sys

import yaml

CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): ("cloudcoil.models.keda.v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("cloudcoil.models.prometheus_operator.v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("cloudcoil.models.prometheus_operator.v1", "PrometheusRule"),
}
# API groups served by Kubernetes itself, which kubernetes-validate's schemas cover.
CORE_GROUPS = {
    "", "apps", "batch", "policy", "networking.k8s.io", "autoscaling", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
}


def unknown_fields(given, kept, path=""):
    """Paths present in `given` but dropped by the model (`kept` is its round trip)."""
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            if key not in kept:
                out.append(f"{path}.{key}")
            else:
                out += unknown_fields(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(given, list) and isinstance(kept, list):
        out = []
        for i, (a, b) in enumerate(zip(given, kept)):
            out += unknown_fields(a, b, f"{path}[{i}]")
        return out
    return []


def validate_custom(doc):
    import importlib

    import pydantic

    module, cls = CRDS[(doc["apiVersion"], doc["kind"])]
    model = getattr(importlib.import_module(module), cls)
    try:
        obj = model.model_validate_json(json.dumps(doc), strict=True)
    except pydantic.ValidationError as e:
        return [str(e)]
    kept = json.loads(obj.model_dump_json(by_alias=True, exclude_unset=True))
    return [f"{p}: not in the {doc['kind']} schema" for p in unknown_fields(doc, kept)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rendered")
    parser.add_argument("--core-out", required=True)
    args = parser.parse_args(argv)
    with open(args.rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    core, failures, custom = [], 0, 0
    for doc in docs:
        api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
        name = f"{kind}/{doc.get('metadata', {}).get('name')}"
        group = api.split("/")[0] if "/" in api else ""
        if (api, kind) in CRDS:
            custom += 1
            problems = validate_custom(doc)
            for p in problems:
                print(f"ERROR {args.rendered}: {name}: {p}")
            failures += bool(problems)
            if not problems:
                print(f"INFO {args.rendered}: {name} passed against its CRD schema")
        elif group in CORE_GROUPS:
            core.append(doc)
        else:
            print(f"ERROR {args.rendered}: {name}: {api} is neither a Kubernetes API nor a known CRD")
            failures += 1
    with open(args.core_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    print(f"validate-k8s: {custom} custom resources checked, {failures} failed; "
          f"{len(core)} Kubernetes objects written to {args.core_out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
