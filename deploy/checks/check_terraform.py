#!/usr/bin/env python3
"""Parses every .tf file under deploy/terraform with python-hcl2 and checks what `terraform
validate` would check of Keel's own module without providers:

- every variable has a description and a type, every output a description;
- every `var.NAME` a file references is declared in its directory;
- every module block that calls a local module (source "./" or "../") passes only arguments that
  module declares as variables, and every variable without a default.

    python3 deploy/checks/check_terraform.py

Exit status 1 with one line per problem. Needs python-hcl2.
"""

import glob
import os
import re
import sys

import hcl2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TF_ROOT = os.path.join(ROOT, "deploy/terraform")
META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}


def unquote(key):
    return key.strip('"') if isinstance(key, str) else key


def load_dir(directory, problems):
    """Returns (variables {name: body}, module calls [(name, body)], raw text) of one directory."""
    variables, modules, text = {}, [], ""
    for path in sorted(glob.glob(os.path.join(directory, "*.tf"))):
        rel = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            raw = f.read()
        text += raw
        try:
            doc = hcl2.loads(raw)
        except Exception as e:  # python-hcl2 raises lark errors of several classes
            problems.append(f"{rel}: does not parse: {str(e).splitlines()[0]}")
            continue
        for block in doc.get("variable", []):
            for name, body in block.items():
                name = unquote(name)
                variables[name] = body
                for key in ("description", "type"):
                    if key not in body:
                        problems.append(f"{rel}: variable {name} has no {key}")
        for block in doc.get("output", []):
            for name, body in block.items():
                if "description" not in body:
                    problems.append(f"{rel}: output {unquote(name)} has no description")
        for block in doc.get("module", []):
            for name, body in block.items():
                modules.append((unquote(name), body))
    return variables, modules, text


def main():
    problems = []
    directories = sorted({os.path.dirname(p) for p in glob.glob(os.path.join(TF_ROOT, "**/*.tf"), recursive=True)})
    loaded = {d: load_dir(d, problems) for d in directories}
    for directory, (variables, modules, text) in loaded.items():
        rel = os.path.relpath(directory, ROOT)
        for name in sorted(set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", text)) - set(variables)):
            problems.append(f"{rel}: var.{name} is referenced but not declared")
        for name, body in modules:
            source = unquote(body.get("source", ""))
            if not source.startswith(("./", "../")):
                continue
            target = os.path.normpath(os.path.join(directory, source))
            if target not in loaded:
                problems.append(f"{rel}: module {name}: source {source} has no .tf files")
                continue
            declared = loaded[target][0]
            passed = {k for k in body if not k.startswith("__")} - META_ARGS
            for arg in sorted(passed - set(declared)):
                problems.append(f"{rel}: module {name} passes {arg}, which {source} does not declare")
            for var in sorted(v for v, b in declared.items() if "default" not in b and v not in passed):
                problems.append(f"{rel}: module {name} does not pass the required variable {var}")
    for p in problems:
        print(p)
    files = len(glob.glob(os.path.join(TF_ROOT, "**/*.tf"), recursive=True))
    print(f"check-terraform: {files} files in {len(directories)} directories parsed; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
