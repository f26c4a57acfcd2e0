"""Tests of .ci/check-metric-names: python3 -m unittest discover -s deploy/checks -p 'test_*.py'"""

import io
import json
import os
import tempfile
import unittest
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, ".ci", "check-metric-names")
FIXTURE = os.path.join(ROOT, "deploy", "checks", "testdata", "metrics-contract.prom")

_loader = SourceFileLoader("check_metric_names", SCRIPT)
cmn = module_from_spec(spec_from_loader("check_metric_names", _loader))
_loader.exec_module(cmn)


def names(expr):
    return [name for name, _ in cmn.selectors(expr)]


def dashboard(*exprs, variable=None):
    board = {"title": "t", "panels": [{"title": f"p{i}", "targets": [{"refId": "A", "expr": e}]}
                                      for i, e in enumerate(exprs)]}
    if variable:
        board["templating"] = {"list": [{"name": "v", "type": "query", "query": {"query": variable}}]}
    return board


class Selectors(unittest.TestCase):
    def test_metric_names_and_their_matcher_labels(self):
        found = list(cmn.selectors('sum by (route) (rate(a_total{status=~"5..", route!="/x"}[5m]))'))
        self.assertEqual(found, [("a_total", ["status", "route"])])

    def test_functions_aggregations_and_grouping_labels_are_not_metrics(self):
        self.assertEqual(names("histogram_quantile(0.95, sum by (le, domain) (rate(h_bucket[$__rate_interval])))"),
                         ["h_bucket"])
        self.assertEqual(names("count by (version) (b_info)"), ["b_info"])
        self.assertEqual(names("sum(rate(c_total[5m])) without (instance)"), ["c_total"])
        self.assertEqual(names('a{state="in_use"} / ignoring (state) group_left b'), ["a", "b"])
        self.assertEqual(names("absent(keel_build_info)"), ["keel_build_info"])

    def test_keywords_durations_numbers_offsets_and_subqueries(self):
        self.assertEqual(names("x > (14.4 * 0.001) and y offset 5m or z unless w > bool 1e3"),
                         ["x", "y", "z", "w"])
        self.assertEqual(names("max_over_time(rate(q_total[5m])[1h:1m])"), ["q_total"])
        self.assertEqual(names("r:ratio_rate5m > inf"), ["r:ratio_rate5m"])

    def test_grafana_variables_are_replaced(self):
        found = list(cmn.selectors('rate(a_total{instance=~"$instance", route=~"${route:regex}"}[$__rate_interval])'))
        self.assertEqual(found, [("a_total", ["instance", "route"])])

    def test_strings_do_not_leak_names(self):
        self.assertEqual(names('a{route="/v1/not_a_metric and x"}'), ["a"])

    def test_name_matchers(self):
        self.assertEqual(list(cmn.selectors('{__name__="m", job="j"}')), [("m", ["job"])])
        with self.assertRaises(cmn.PromQLError):
            list(cmn.selectors('{job="j"}'))
        with self.assertRaises(cmn.PromQLError):
            list(cmn.selectors('m{__name__=~"x.*"}'))


class Exposition(unittest.TestCase):
    def test_type_lines_declare_the_series_names_of_a_family(self):
        declared, sampled = cmn.parse_exposition(
            "# TYPE h histogram\n# TYPE c counter\n# TYPE s summary\n"
            'g{a="1",b="x,y"} 3\n'
        )
        for name in ("h", "h_bucket", "h_sum", "h_count", "c", "c_total", "s_sum", "s_count"):
            self.assertIn(name, declared)
        self.assertEqual(sampled, {"g": {"a", "b"}})

    def test_garbage_is_an_error(self):
        with self.assertRaises(ValueError):
            cmn.parse_exposition("this is not prometheus text\n")


class Check(unittest.TestCase):
    def run_check(self, metrics, rules=(), boards=()):
        files = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, board in enumerate(boards):
                path = os.path.join(tmp, f"b{i}.json")
                with open(path, "w") as f:
                    json.dump(board, f)
                files.append(path)
            rule_paths = []
            for i, text in enumerate(rules):
                path = os.path.join(tmp, f"r{i}.yaml")
                with open(path, "w") as f:
                    f.write(text)
                rule_paths.append(path)
            out = io.StringIO()
            code = cmn.check(metrics, rule_paths, files, out=out)
            return code, out.getvalue()

    def test_the_repository_dashboards_and_rules_pass_against_the_contract(self):
        with open(FIXTURE) as f:
            metrics = f.read()
        rules = sorted(cmn.glob.glob(os.path.join(ROOT, cmn.DEFAULT_RULES)))
        boards = sorted(cmn.glob.glob(os.path.join(ROOT, cmn.DEFAULT_DASHBOARDS)))
        scalers = sorted(cmn.glob.glob(os.path.join(ROOT, cmn.DEFAULT_AUTOSCALERS)))
        self.assertTrue(rules and boards and scalers)
        out = io.StringIO()
        code = cmn.check(metrics, rules, boards, out=out, autoscaler_files=scalers)
        self.assertEqual(code, 0, out.getvalue())
        self.assertIn("0 problems", out.getvalue())

    def test_an_unknown_metric_fails_and_is_named(self):
        code, out = self.run_check("# TYPE a_total counter\na_total 1\n",
                                   boards=[dashboard("rate(a_total[5m]) / rate(keel_typo_total[5m])")])
        self.assertEqual(code, 1)
        self.assertIn("keel_typo_total is not exported", out)
        self.assertNotIn("a_total is not", out)

    def test_an_unknown_label_fails_but_scrape_labels_pass(self):
        metrics = 'a_total{route="/x"} 1\n'
        code, out = self.run_check(metrics, boards=[dashboard('rate(a_total{path="/x", instance="i"}[5m])')])
        self.assertEqual(code, 1)
        self.assertIn("a_total has no label path", out)
        code, out = self.run_check(metrics, boards=[dashboard('rate(a_total{route="/x", job="j"}[5m])')])
        self.assertEqual(code, 0, out)

    def test_recorded_names_count_as_defined(self):
        rules = ("groups:\n- name: g\n  rules:\n"
                 "  - record: job:a:rate5m\n    expr: sum(rate(a_total[5m]))\n"
                 "  - alert: A\n    expr: job:a:rate5m > 1\n")
        code, out = self.run_check("a_total 1\n", rules=[rules], boards=[dashboard("job:a:rate5m")])
        self.assertEqual(code, 0, out)
        code, out = self.run_check("b_total 1\n", rules=[rules])
        self.assertEqual(code, 1)
        self.assertIn("a_total is not exported", out)

    def test_a_prometheusrule_is_read_from_its_spec(self):
        rule = ("apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nspec:\n  groups:\n"
                "  - name: g\n    rules:\n    - alert: A\n      expr: missing_metric > 0\n")
        code, out = self.run_check("a 1\n", rules=[rule])
        self.assertEqual(code, 1)
        self.assertIn("missing_metric is not exported", out)

    def test_autoscaler_queries_are_checked(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "so.yaml")
            with open(path, "w") as f:
                f.write("apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: s}\nspec:\n"
                        "  triggers:\n  - type: cpu\n    metadata: {value: '70'}\n"
                        "  - type: prometheus\n    name: q\n    metadata:\n"
                        "      query: max(keel_jobs_oldest_age{namespace=\"keel\"})\n")
            out = io.StringIO()
            code = cmn.check("keel_jobs_oldest_ready_age_seconds 1\n", [], [], out=out, autoscaler_files=[path])
        self.assertEqual(code, 1)
        self.assertIn("s/q: keel_jobs_oldest_age is not exported", out.getvalue())

    def test_variable_queries(self):
        code, out = self.run_check("a 1\n", boards=[dashboard("a", variable="label_values(b_total, route)")])
        self.assertEqual(code, 1)
        self.assertIn("variable v: b_total is not exported", out)
        code, out = self.run_check("a 1\n", boards=[dashboard("a", variable="label_values(route)")])
        self.assertEqual(code, 1)
        self.assertIn("names no metric that can be checked", out)

    def test_command_line_exit_codes(self):
        self.assertEqual(cmn.main(["--metrics", FIXTURE]), 0)
        self.assertEqual(cmn.main(["--metrics", os.path.join(ROOT, "no-such-file.prom")]), 2)


if __name__ == "__main__":
    unittest.main()
