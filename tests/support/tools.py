"""The programs outside the virtualenv that the tests drive, where each comes from, and what a missing one means."""

from __future__ import annotations

import os
import shutil

import pytest

TOOLS = {
    "promtool": "Debian package prometheus",
    "prometheus": "Debian package prometheus",
    "kubectl": "kubectl, from the Kubernetes packages",
    "node": "Debian package nodejs",
    "npm": "Debian package npm",
    "podman": "Debian package podman",
    "runc": "Debian package runc",
    "debootstrap": "Debian package debootstrap",
    "pgbouncer": "Debian package pgbouncer",
}
"""The programs outside the virtualenv that the tests drive (`deliverables`, and PgBouncer in front of the test
server), and where each comes from."""


def require_tool(name: str) -> str:
    """The path of program `name`. When it is missing the test is skipped, saying why, on a developer's machine, and
    fails when CI=true: CI installs every tool (scripts/setup --test-tools), so there a missing one is a broken setup,
    never a reason to prove less."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")  # Debian puts daemons in sbin
    if path:
        return path
    reason = f"{name} is missing ({TOOLS[name]}; `scripts/setup --test-tools` installs it as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)
