#!/usr/bin/env python3
"""Renders deploy/observability/prometheusrule.yaml (a PrometheusRule for the Prometheus Operator)
from deploy/observability/prometheus/keel.rules.yaml, the one source of Keel's rules.

    python3 deploy/checks/render_prometheusrule.py            # write it
    python3 deploy/checks/render_prometheusrule.py --check    # exit 1 if the committed file differs

Needs PyYAML.
"""

import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "deploy/observability/prometheus/keel.rules.yaml")
TARGET = os.path.join(ROOT, "deploy/observability/prometheusrule.yaml")

HEADER = """\
# GENERATED from deploy/observability/prometheus/keel.rules.yaml by
# deploy/checks/render_prometheusrule.py: edit the source, then run the script. CI checks that
# this file is up to date.
"""


class _Literal(str):
    pass


def _literal(dumper, value):
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


yaml.add_representer(_Literal, _literal, Dumper=yaml.SafeDumper)


def _literals(node):
    if isinstance(node, dict):
        return {k: _literals(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_literals(v) for v in node]
    if isinstance(node, str):
        return _Literal(node)
    return node


def render():
    with open(SOURCE, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "keel",
            # kube-prometheus-stack's ruleSelector matches its Helm release label.
            "labels": {"app.kubernetes.io/name": "keel", "app.kubernetes.io/part-of": "keel",
                       "release": "kube-prometheus-stack"},
        },
        "spec": {"groups": _literals(groups)},
    }
    return HEADER + yaml.safe_dump(rule, sort_keys=False, width=120)


def main(argv):
    text = render()
    if "--check" in argv:
        current = open(TARGET, encoding="utf-8").read() if os.path.exists(TARGET) else ""
        if current != text:
            print("deploy/observability/prometheusrule.yaml is out of date: run deploy/checks/render_prometheusrule.py",
                  file=sys.stderr)
            return 1
        return 0
    with open(TARGET, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
