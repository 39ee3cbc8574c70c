#!/usr/bin/env python3
"""Helm's own engine (PyPI's helm-python-sdk, Helm v4's Go library) for the
chart tests: render like `helm template`, lint like `helm lint`, validate
values against values.schema.json. No cluster, no helm binary.

    render.py render CHART [VALUES.yaml] [--name N] [--namespace NS]
        stdout: {"manifests": {"<template path>": "<rendered text>"}}
    render.py lint CHART [VALUES.yaml]
        stdout: the lint report {"messages": [{"severity", "path", "error"}], ...}
    render.py validate CHART VALUES.yaml
        exit 0 when the values pass the chart's schema; else exit 1 with
        Helm's message on stderr

Values files are YAML, read with Helm's own parser. Any error is one line
on stderr and exit status 1 (2 for usage).
"""

import argparse
import json
import sys

import helm_python as helm


def read_values(path):
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return helm.values_from_yaml(f.read())


def main():
    p = argparse.ArgumentParser(prog="render.py")
    p.add_argument("action", choices=["render", "lint", "validate"])
    p.add_argument("chart")
    p.add_argument("values", nargs="?")
    p.add_argument("--name", default="meshlane")
    p.add_argument("--namespace", default="meshlane-system")
    a = p.parse_args()
    try:
        values = read_values(a.values)
        if a.action == "lint":
            report = helm.lint(a.chart, values, strict=True, namespace=a.namespace)
            json.dump(report, sys.stdout)
            return 0
        chart = helm.Chart.load(a.chart)
        chart.validate_schema(values)
        if a.action == "validate":
            return 0
        manifests = chart.render(
            values, name=a.name, namespace=a.namespace, is_install=True
        )
        json.dump({"manifests": manifests}, sys.stdout)
        return 0
    except helm.HelmError as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
