#!/usr/bin/env python3
"""Every third-party image of the deployment files is pinned to a release.

A tag like `postgres:16` or `rabbitmq:3.10-management` moves under the file
that names it: the next pull may be another release than the one the file
was checked with. This accepts only tags that carry a full version
(`16.15-bookworm`, `3.10.25-management`, `v3.5.17`) or a digest. Signalbox's
own images are exempt: `signalbox:dev` and `signalbox-cli:dev` are built
from this checkout, and overlays/prod's REPLACE_ME is filled in by whoever
deploys.

Usage: image_pins.py RESOLVED_COMPOSE_YAML RENDERED_K8S_YAML...
"""

from __future__ import annotations

import re
import sys

import yaml

OWN = re.compile(r"^(.*/)?signalbox(-cli)?:")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
# How many numbers a release of an image has: three (1.2.3) unless the
# project numbers its releases otherwise (PostgreSQL since 10: 16.15).
RELEASE_PARTS = {"postgres": 2}


def pinned(image: str) -> bool:
    if DIGEST.search(image):
        return True
    name, _, tag = image.rpartition(":")
    parts = RELEASE_PARTS.get(name.rsplit("/", 1)[-1], 3)
    return re.match(r"v?" + r"\.".join([r"\d+"] * parts) + r"([-._][\w.-]+)?$", tag) is not None


def images(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from images(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from images(item)


def main(paths: list[str]) -> int:
    found = set()
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for document in yaml.safe_load_all(handle):
                found.update(images(document))
    problems = [
        image
        for image in sorted(found)
        if not OWN.match(image) and "REPLACE_ME" not in image and not pinned(image)
    ]
    for image in problems:
        print(f"{image}: not pinned to a release (name a full version, e.g. name:1.2.3)")
    print(f"{len(found)} images, {len(problems)} not pinned")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
