"""Writes of agents."""
from __future__ import annotations

from .models import Agent, agent_name_validator


def get_or_create_agent(*, name: str) -> Agent:
    """The agent called ``name``, created on first use; a name that is not a slug raises ValidationError."""
    agent = Agent.objects.filter(name=name).first()
    if agent is not None:
        return agent
    agent_name_validator(name)
    agent, _ = Agent.objects.get_or_create(name=name)  # get_or_create survives a concurrent create
    return agent
