#!/usr/bin/env python3
"""Prints the ninja targets that some of a build directory's tests need: each test's
program and what it depends on (the ftvm binary, the guest image), so that a
sanitizer build compiles only those (scripts/test-asan.sh, scripts/test-tsan.sh).

Usage: test-targets.py BUILDDIR [--skip-suite S]... [NAME...]
  NAME...          only these tests (each must exist); without names, every test
  --skip-suite S   leave out the tests of suite S (e.g. fuzz)
"""
import json
import os
import subprocess
import sys


def main(argv):
    if not argv:
        sys.exit(__doc__)
    build = os.path.abspath(argv[0])
    skip, names, args = set(), set(), argv[1:]
    while args:
        if args[0] == "--skip-suite" and len(args) > 1:
            skip.add("ftvm:" + args[1])
            args = args[2:]
        else:
            names.add(args[0])
            args = args[1:]
    info = lambda what: json.loads(subprocess.check_output(["meson", "introspect", build, what]))
    files = {t["id"]: t["filename"] for t in info("--targets")}
    wanted, out = set(names), set()
    for t in info("--tests"):
        if (names and t["name"] not in names) or set(t["suite"]) & skip:
            continue
        wanted.discard(t["name"])
        if t["cmd"][0].startswith(build):  # not a system program (bash, env, python3)
            out.add(os.path.relpath(t["cmd"][0], build))
        for d in t.get("depends", []):
            out.update(os.path.relpath(f, build) for f in files.get(d, []))
    if wanted:
        sys.exit("test-targets.py: no such tests: " + " ".join(sorted(wanted)))
    print(" ".join(sorted(out)))


if __name__ == "__main__":
    main(sys.argv[1:])
