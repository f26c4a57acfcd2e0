#!/usr/bin/env python3
"""Prints the path of a binary target from cargo's JSON messages on standard input.

    cargo test --workspace --no-run --message-format=json-render-diagnostics | python3 cargo_bin.py gateway

Takes the `compiler-artifact` message of the bin target NAME (not its unit-test build), which
cargo emits for fresh units too. Exit status 1 when there is none. Standard library only.
"""

import json
import sys


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    name, found = argv[0], None
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target") or {}
        if (msg.get("reason") == "compiler-artifact" and target.get("name") == name
                and "bin" in target.get("kind", []) and not msg.get("profile", {}).get("test")
                and msg.get("executable")):
            found = msg["executable"]
    if not found:
        print(f"cargo-bin: cargo built no binary {name!r}", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
