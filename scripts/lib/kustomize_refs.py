#!/usr/bin/env python3
"""Check the file references of every kustomization under a folder.

kustomize itself only notices a missing file when the overlay that uses it is
rendered, and only if `kubectl kustomize` is at hand. This check needs
nothing but PyYAML, so it runs everywhere:

  * every local path a kustomization.yaml names (resources, components,
    patches, generator files) exists; a folder named as a resource or
    component holds a kustomization of its own;
  * every YAML file under the folder is used by some kustomization, so a
    manifest nobody applies cannot rot unnoticed.

Usage:
  kustomize_refs.py check K8S_DIR        report problems, exit 1 if any
  kustomize_refs.py resources K8S_DIR    print the files listed as whole
                                         resources (one per line), the ones
                                         to validate as complete manifests
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def is_remote(ref: str) -> bool:
    return "://" in ref or ref.startswith(("github.com/", "git@"))


def generator_paths(generators: list) -> list[str]:
    """Paths in configMapGenerator / secretGenerator entries (`key=path` or `path`)."""
    paths = []
    for gen in generators or []:
        for entry in (gen.get("files") or []) + (gen.get("envs") or []):
            paths.append(entry.split("=", 1)[1] if "=" in entry else entry)
        if gen.get("env"):
            paths.append(gen["env"])
    return paths


def scan(k8s_dir: Path):
    """Return (problems, resource_files, referenced_files)."""
    problems: list[str] = []
    resource_files: set[Path] = set()
    referenced: set[Path] = set()

    kustomizations = sorted(
        p for name in KUSTOMIZATION_NAMES for p in k8s_dir.rglob(name)
    )
    if not kustomizations:
        problems.append(f"{k8s_dir}: no kustomization found")

    for kfile in kustomizations:
        base = kfile.parent
        referenced.add(kfile.resolve())
        try:
            doc = yaml.safe_load(kfile.read_text()) or {}
        except yaml.YAMLError as err:
            problems.append(f"{kfile}: not valid YAML: {err}")
            continue

        def need_file(ref: str, field: str, whole_resource: bool = False) -> None:
            target = (base / ref).resolve()
            if not target.exists():
                problems.append(f"{kfile}: {field}: '{ref}' does not exist")
                return
            if target.is_dir():
                if not any((target / n).is_file() for n in KUSTOMIZATION_NAMES):
                    problems.append(
                        f"{kfile}: {field}: folder '{ref}' has no kustomization.yaml"
                    )
                return
            referenced.add(target)
            if whole_resource:
                resource_files.add(target)

        for field in ("resources", "bases", "components", "crds"):
            for ref in doc.get(field) or []:
                if not is_remote(ref):
                    need_file(ref, field, whole_resource=(field == "resources"))

        for entry in doc.get("patches") or []:
            if isinstance(entry, str):
                need_file(entry, "patches")
            elif isinstance(entry, dict) and "path" in entry:
                need_file(entry["path"], "patches")
        for ref in doc.get("patchesStrategicMerge") or []:
            # Entries may be inline patches rather than file names.
            if isinstance(ref, str) and "\n" not in ref:
                need_file(ref, "patchesStrategicMerge")
        for entry in doc.get("patchesJson6902") or []:
            if isinstance(entry, dict) and "path" in entry:
                need_file(entry["path"], "patchesJson6902")

        for field in ("configMapGenerator", "secretGenerator"):
            for ref in generator_paths(doc.get(field)):
                need_file(ref, field)

    for path in sorted(k8s_dir.rglob("*")):
        if path.suffix in (".yaml", ".yml") and path.resolve() not in referenced:
            problems.append(f"{path}: not used by any kustomization")

    return problems, resource_files, referenced


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("check", "resources"):
        print("Usage:" + __doc__.split("Usage:")[1].rstrip(), file=sys.stderr)
        return 2
    k8s_dir = Path(argv[2])
    problems, resource_files, _ = scan(k8s_dir)
    if argv[1] == "resources":
        cwd = Path.cwd().resolve()
        for path in sorted(resource_files):
            print(path.relative_to(cwd) if path.is_relative_to(cwd) else path)
        return 0
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
