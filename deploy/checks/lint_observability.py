#!/usr/bin/env python3
"""Structural checks of Keel's dashboards and alert rules that promtool and JSON parsing miss.

    python3 deploy/checks/lint_observability.py --promql-out FILE

Dashboards (deploy/observability/dashboards/*.json): unique uids and panel ids, panels within
Grafana's 24 columns, every query panel on the `${datasource}` variable with at least one target.
Every dashboard expression, and every Prometheus query of the KEDA ScaledObjects, is written to
FILE as a recording rule, Grafana variables replaced (.ci/check-metric-names does the same
replacement), so that `promtool check rules FILE` parses each one with Prometheus's own parser.

Rules (deploy/observability/prometheus/*.rules.yaml): every alert has a severity of critical,
warning or info (kube-prometheus' levels: info is a notice for a person to look at, never a
page), a summary, a description and a runbook_url whose anchor is a heading of
deploy/RUNBOOK.md.

Exit status 1 with one line per problem. Needs PyYAML.
"""

import argparse
import glob
import json
import os
import re
import sys
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARDS = os.path.join(ROOT, "deploy/observability/dashboards/*.json")
RULES = os.path.join(ROOT, "deploy/observability/prometheus/*.rules.yaml")
RUNBOOK = os.path.join(ROOT, "deploy/RUNBOOK.md")


def _check_metric_names():
    loader = SourceFileLoader("check_metric_names", os.path.join(ROOT, ".ci", "check-metric-names"))
    module = module_from_spec(spec_from_loader("check_metric_names", loader))
    loader.exec_module(module)
    return module


def github_anchor(heading):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def lint_dashboards(paths, problems):
    uids, exprs = {}, []
    for path in paths:
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            board = json.load(f)
        uid = board.get("uid")
        if not uid or uid in uids:
            problems.append(f"{rel}: uid {uid!r} missing or also used by {uids.get(uid)}")
        uids[uid] = rel
        for key in ("title", "schemaVersion", "panels", "templating"):
            if key not in board:
                problems.append(f"{rel}: no {key}")
        variables = [v.get("name") for v in board.get("templating", {}).get("list", [])]
        if "datasource" not in variables:
            problems.append(f"{rel}: no datasource variable")
        ids = set()
        for panel in board.get("panels", []):
            title = panel.get("title", "?")
            if panel.get("id") in ids:
                problems.append(f"{rel}: panel {title}: duplicate id {panel.get('id')}")
            ids.add(panel.get("id"))
            grid = panel.get("gridPos", {})
            if grid.get("x", 0) + grid.get("w", 0) > 24 or grid.get("w", 0) <= 0 or grid.get("h", 0) <= 0:
                problems.append(f"{rel}: panel {title}: gridPos {grid} outside 24 columns")
            if panel.get("type") == "row":
                continue
            if panel.get("datasource", {}).get("uid") != "${datasource}":
                problems.append(f"{rel}: panel {title}: data source is not ${{datasource}}")
            targets = panel.get("targets") or []
            if not targets:
                problems.append(f"{rel}: panel {title}: no query")
            for target in targets:
                if not target.get("expr"):
                    problems.append(f"{rel}: panel {title}: target {target.get('refId')} has no expr")
                else:
                    exprs.append((f"{board.get('uid')}: {title}", target["expr"]))
    return exprs


def lint_rules(paths, problems):
    with open(RUNBOOK, encoding="utf-8") as f:
        anchors = {github_anchor(m.group(1)) for m in re.finditer(r"^#+\s+(.+)$", f.read(), re.M)}
    for path in paths:
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
        for group in doc.get("groups", []):
            for rule in group.get("rules", []):
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    problems.append(f"{rel}: {name}: severity must be critical, warning or info")
                annotations = rule.get("annotations", {})
                for key in ("summary", "description", "runbook_url"):
                    if not annotations.get(key):
                        problems.append(f"{rel}: {name}: no {key} annotation")
                url = annotations.get("runbook_url", "")
                if not url.startswith("deploy/RUNBOOK.md#"):
                    problems.append(f"{rel}: {name}: runbook_url must point into deploy/RUNBOOK.md")
                elif url.split("#", 1)[1] not in anchors:
                    problems.append(f"{rel}: {name}: deploy/RUNBOOK.md has no heading for #{url.split('#', 1)[1]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promql-out", required=True, help="write the dashboards' PromQL here as rules")
    args = parser.parse_args(argv)
    problems = []
    exprs = lint_dashboards(sorted(glob.glob(DASHBOARDS)), problems)
    lint_rules(sorted(glob.glob(RULES)), problems)
    cmn = _check_metric_names()
    for path in sorted(glob.glob(os.path.join(ROOT, cmn.DEFAULT_AUTOSCALERS))):
        exprs += cmn.autoscaler_expressions(path)
    rules = [{"record": f"dashboard_expr_{i}", "expr": cmn.substitute_grafana_vars(expr)}
             for i, (_, expr) in enumerate(exprs)]
    with open(args.promql_out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]}, f, sort_keys=False)
    for p in problems:
        print(p)
    print(f"lint-observability: {len(exprs)} dashboard and autoscaler queries written to {args.promql_out}; "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
