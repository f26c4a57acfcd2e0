#!/usr/bin/env python3
"""Checks of deploy/compose/compose.yaml that its JSON schema cannot express.

    python3 deploy/checks/lint_compose.py

- every `depends_on` target is a service; `service_healthy` targets have a health check (their
  own, or the gateway image's HEALTHCHECK), `service_completed_successfully` targets do not restart;
- every variable the file requires (`${VAR:?...}`) or reads (`${VAR:-default}`) is listed in
  .env.example;
- every bind-mounted path exists in the repository;
- every published port binds to 127.0.0.1.

Exit status 1 with one line per problem. Needs PyYAML.
"""

import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMPOSE_DIR = os.path.join(ROOT, "deploy/compose")
COMPOSE = os.path.join(COMPOSE_DIR, "compose.yaml")
ENV_EXAMPLE = os.path.join(COMPOSE_DIR, ".env.example")
DOCKERFILE = os.path.join(ROOT, "deploy/docker/Dockerfile")


def main():
    problems = []
    with open(COMPOSE, encoding="utf-8") as f:
        text = f.read()
    doc = yaml.safe_load(text)
    services = doc["services"]
    with open(DOCKERFILE, encoding="utf-8") as f:
        image_has_healthcheck = re.search(r"^HEALTHCHECK\s+(?!NONE)", f.read(), re.M) is not None

    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
                continue
            condition = cond.get("condition") if isinstance(cond, dict) else "service_started"
            target = services[dep]
            if condition == "service_healthy":
                own = target.get("healthcheck")
                if own and own.get("disable"):
                    problems.append(f"{name}: waits for {dep} to be healthy, whose health check is disabled")
                elif not own and not ("build" in target and image_has_healthcheck):
                    problems.append(f"{name}: waits for {dep} to be healthy, which has no health check")
            if condition == "service_completed_successfully" and target.get("restart", "no") != "no":
                problems.append(f"{name}: waits for {dep} to complete, but {dep} restarts")
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                path = os.path.normpath(os.path.join(COMPOSE_DIR, source))
                if not os.path.exists(path):
                    problems.append(f"{name}: bind mount {source} does not exist")
        for port in svc.get("ports") or []:
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} is published on every interface")

    with open(ENV_EXAMPLE, encoding="utf-8") as f:
        listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", f.read(), re.M))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-?+][^}]*)?\}", text))
    for var in sorted(used - listed):
        problems.append(f".env.example does not list {var}")

    for p in problems:
        print(f"compose: {p}")
    print(f"lint-compose: {len(services)} services; {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
