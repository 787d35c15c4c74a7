#!/usr/bin/env python3
"""Compare the environment each deployment gives a service with what the
service reads.

What a service reads comes from the code: `settings-env` (crates/settings-env)
serialises every service's default settings and names each leaf
`APP__SECTION__KEY`, marking `required` the ones whose default only works
on a developer's machine (loopback addresses, secrets). What a deployment
gives comes from the deployment files as their tools resolve them:
`docker-compose config` (anchors and merges applied) and the rendered
kustomize overlays (ConfigMap and Secret references followed).

For every Signalbox container (the service is its command), it fails when
  * a variable `APP__…` is set that the service does not read (a typo, or a
    setting that was renamed or removed), or one that is not a Signalbox
    setting at all (only RUST_LOG, APP_CONFIG_DIR and OTEL_* are);
  * a required variable is not set (the default would point the container
    at itself, or leave a secret at its development value);
  * a key of the `signalbox-config` ConfigMap is referenced by no container.

Usage:
  deploy_env.py SETTINGS_JSON --compose COMPOSE_CONFIG_YAML \
                [--k8s NAME=RENDERED_YAML ...]
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

# Read by something other than the settings: the log filter, the config
# directory, and the OpenTelemetry SDK's standard variables.
OTHER_VARIABLES = {"RUST_LOG", "APP_CONFIG_DIR"}
OTHER_PREFIXES = ("OTEL_",)

# Required only in some modes: the registry's address matters in discovery
# mode `registry` alone, which no deployment file runs (they use the
# platform's DNS).
CONDITIONAL = {
    "APP__DISCOVERY__ETCD_ENDPOINTS": ("APP__DISCOVERY__MODE", "registry"),
    "APP__DISCOVERY__ADVERTISE_HOST": ("APP__DISCOVERY__MODE", "registry"),
}


def check_container(where: str, service: str, given: set[str], known: dict, mode: dict) -> list[str]:
    problems = []
    for name in sorted(given):
        if name.startswith("APP__"):
            if name not in known:
                problems.append(f"{where}: sets {name}, which {service} does not read")
        elif name not in OTHER_VARIABLES and not name.startswith(OTHER_PREFIXES):
            problems.append(f"{where}: sets {name}, which is not a Signalbox setting")
    for name, variable in sorted(known.items()):
        if not variable["required"] or name in given:
            continue
        condition = CONDITIONAL.get(name)
        if condition and mode.get(condition[0], "dns") != condition[1]:
            continue
        problems.append(
            f"{where}: does not set {name}, and {service}'s default "
            f"({json.dumps(variable['default'])}) only works on a developer's machine"
        )
    return problems


def compose_containers(path: str, services: set[str]):
    """(where, service, {name: value}) of every Signalbox container."""
    with open(path, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    for name, spec in sorted((config.get("services") or {}).items()):
        command = spec.get("command") or []
        if isinstance(command, str):
            command = command.split()
        if command and command[0] in services:
            environment = spec.get("environment") or {}
            if isinstance(environment, list):
                environment = dict(item.split("=", 1) for item in environment)
            yield f"docker-compose.yml service {name}", command[0], {
                k: "" if v is None else str(v) for k, v in environment.items()
            }


def k8s_containers(label: str, path: str, services: set[str], used_config_keys: set[str]):
    """(where, service, {name: value}) of every Signalbox container of a
    rendered overlay; the ConfigMap keys referenced go to used_config_keys."""
    with open(path, encoding="utf-8") as handle:
        objects = [o for o in yaml.safe_load_all(handle) if o]
    maps = {
        (o["kind"], o["metadata"]["name"]): {**(o.get("data") or {}), **(o.get("stringData") or {})}
        for o in objects
        if o.get("kind") in ("ConfigMap", "Secret")
    }
    for obj in objects:
        if obj.get("kind") not in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("containers") or []:
            command = container.get("command") or container.get("args") or []
            if not command or command[0] not in services:
                continue
            given = {}
            for entry in container.get("envFrom") or []:
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in entry:
                        keys = maps.get((kind, entry[ref]["name"]), {})
                        given.update(keys)
                        if kind == "ConfigMap" and entry[ref]["name"] == "signalbox-config":
                            used_config_keys.update(keys)
            for entry in container.get("env") or []:
                source = entry.get("valueFrom") or {}
                value = entry.get("value", "")
                ref = source.get("configMapKeyRef")
                if ref:
                    if ref["name"] == "signalbox-config":
                        used_config_keys.add(ref["key"])
                    value = maps.get(("ConfigMap", ref["name"]), {}).get(ref["key"], "")
                given[entry["name"]] = str(value)
            where = f"{label} {obj['kind'].lower()}/{obj['metadata']['name']}"
            yield where, command[0], given


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("settings")
    parser.add_argument("--compose", required=True)
    parser.add_argument("--k8s", action="append", default=[], metavar="NAME=RENDERED")
    args = parser.parse_args()

    with open(args.settings, encoding="utf-8") as handle:
        known = json.load(handle)
    services = set(known)
    problems: list[str] = []
    seen: dict[str, set[str]] = {}

    def check(where, service, given):
        seen.setdefault(where.split(" ")[0], set()).add(service)
        problems.extend(check_container(where, service, set(given), known[service], given))

    for where, service, given in compose_containers(args.compose, services):
        check(where, service, given)
    for item in args.k8s:
        label, path = item.split("=", 1)
        used: set[str] = set()
        for where, service, given in k8s_containers(label, path, services, used):
            check(where, service, given)
        with open(path, encoding="utf-8") as handle:
            for obj in yaml.safe_load_all(handle):
                if obj and obj.get("kind") == "ConfigMap" and obj["metadata"]["name"] == "signalbox-config":
                    for key in sorted(set(obj.get("data") or {}) - used):
                        problems.append(f"{label}: ConfigMap signalbox-config has {key}, which no container takes")

    for source, found in sorted(seen.items()):
        for service in sorted(services - found):
            problems.append(f"{source}: runs no {service} container")
    for problem in problems:
        print(problem)
    checked = sum(len(v) for v in seen.values())
    if problems:
        print(f"{len(problems)} problem(s)")
        return 1
    print(f"every service's environment matches its settings ({', '.join(sorted(seen))}; {checked} service deployments)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
