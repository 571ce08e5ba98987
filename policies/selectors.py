"""Reads of agents and policy versions; each raises NotFound with a message a client can act on."""
from __future__ import annotations

import re

from django.db.models import QuerySet

from n3site.exceptions import NotFound

from .models import Agent, PolicyVersion

# One spelling per version: "v1", never "v01" or "v0001" (they would all be v1, and caches and links would disagree).
_VERSION = re.compile(r"^v([1-9]\d{0,8})$")
_PADDED = re.compile(r"^v0+([1-9]\d{0,8})$")


def get_agent(*, name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise NotFound(f"Agent '{name}' not found")
    return agent


def policy_versions_for(*, agent_name: str) -> QuerySet[PolicyVersion]:
    """The agent's versions, newest first."""
    agent = get_agent(name=agent_name)
    return PolicyVersion.objects.filter(agent=agent).select_related("agent").order_by("-number")


def get_policy_version(*, agent_name: str, version: str) -> PolicyVersion:
    """``version`` as the API writes it: "v3"."""
    match = _VERSION.fullmatch(version)  # fullmatch: "$" alone lets "v1\n" through
    found = match and PolicyVersion.objects.filter(
        agent__name=agent_name, number=int(match.group(1))
    ).select_related("agent").first()
    if not found:
        get_agent(name=agent_name)  # an unknown agent is reported as such
        padded = _PADDED.fullmatch(version)
        hint = f"write it 'v{padded.group(1)}'" if padded else "versions are named v1, v2, ..."
        raise NotFound(f"Version '{version}' of agent '{agent_name}' not found ({hint})")
    return found
