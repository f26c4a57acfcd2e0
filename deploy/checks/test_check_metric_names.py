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
            "# TYPE h histogram\n# TYPE c_total counter\n# TYPE d counter\n# TYPE s summary\n"
            'g{a="1",b="x,y"} 3\n'
        )
        self.assertEqual(declared, {"h_bucket", "h_sum", "h_count", "c_total", "d", "s", "s_sum", "s_count"})
        self.assertEqual(sampled, {"g": {"a", "b"}})

    def test_openmetrics_counter_families_are_stored_with_total(self):
        # OpenMetrics names the family without _total; Prometheus stores only NAME_total, so a
        # query for the bare family name finds nothing and must fail.
        declared, _ = cmn.parse_exposition("# TYPE c counter\n# TYPE i info\n# TYPE h histogram\n# EOF\n")
        self.assertEqual(declared, {"c_total", "i_info", "h_bucket", "h_sum", "h_count"})

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

    def test_a_counter_family_name_without_total_fails_against_openmetrics(self):
        text = '# TYPE c counter\nc_total{a="1"} 2\n# EOF\n'
        code, out = self.run_check(text, boards=[dashboard("rate(c[5m])")])
        self.assertEqual(code, 1)
        self.assertIn("c is not exported", out)
        code, out = self.run_check(text, boards=[dashboard('rate(c_total{a="1"}[5m])')])
        self.assertEqual(code, 0, out)

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

    def test_known_absent_families_pass_until_they_are_exported(self):
        board = dashboard("histogram_quantile(0.5, rate(h_seconds_bucket[5m]))", "rate(c_total[5m])", "g")
        absent = {"h_seconds": "not yet", "c_total": "not yet"}
        out = io.StringIO()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "b.json")
            with open(path, "w") as f:
                json.dump(board, f)
            self.assertEqual(cmn.check("g 1\n", [], [path], out=out, known_absent=absent), 0, out.getvalue())
            self.assertIn("known absent: h_seconds: not yet", out.getvalue())
            self.assertIn("known absent: c_total: not yet", out.getvalue())
            # Without the list, the same uses fail.
            out = io.StringIO()
            self.assertEqual(cmn.check("g 1\n", [], [path], out=out), 1)
            self.assertIn("h_seconds_bucket is not exported", out.getvalue())
            # Exported now (a series of the family, or only its # TYPE line): the entry is stale.
            for text in ("g 1\nh_seconds_count 0\n", "g 1\n# TYPE c_total counter\n", "g 1\n# TYPE c counter\n# EOF\n"):
                out = io.StringIO()
                self.assertEqual(cmn.check(text, [], [path], out=out, known_absent=absent), 1)
                self.assertIn("is exported now: remove it from the list", out.getvalue())
            # Listed but used by nothing: stale too.
            out = io.StringIO()
            self.assertEqual(cmn.check("g 1\n", [], [path], out=out, known_absent={**absent, "u": "x"}), 1)
            self.assertIn("known-absent u is used by no dashboard", out.getvalue())

    def test_known_absent_file_format(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "absent.txt")
            with open(path, "w") as f:
                f.write("# comment\n\nkeel_a_total   why it is absent  # trailing\n")
            self.assertEqual(cmn.read_known_absent(path), {"keel_a_total": "why it is absent"})
            with open(path, "w") as f:
                f.write("keel_a_total\n")
            with self.assertRaises(ValueError):
                cmn.read_known_absent(path)
        # The repository's own list parses (it may be empty: every family is exported today).
        repo_list = os.path.join(ROOT, "deploy", "checks", "known-absent-metrics.txt")
        self.assertIsInstance(cmn.read_known_absent(repo_list), dict)

    def test_command_line_exit_codes(self):
        self.assertEqual(cmn.main(["--metrics", FIXTURE]), 0)
        self.assertEqual(cmn.main(["--metrics", os.path.join(ROOT, "no-such-file.prom")]), 2)


if __name__ == "__main__":
    unittest.main()
