"""The inference process's database work (sync; the server runs it in threads): who is asking, which version
answers, and the served response recorded as unscored feedback."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError
from rest_framework.authtoken.models import Token

from feedback.models import Feedback
from feedback.services import record_feedback
from n3site.exceptions import Conflict, NotFound
from policies.models import Agent, PolicyVersion
from policies.selectors import get_agent, get_policy_version
from training.deployment import version_for
from training.files import absolute_path

logger = logging.getLogger(__name__)

# What a token's user needs to be served: the permission that reads versions through the API.
SERVE_PERMISSION = "policies.view_policyversion"

class Forbidden(Exception):
    """A valid token whose user may not be served."""


class _Cache:
    """A small thread-safe cache whose entries expire after ``seconds`` (read at each put: settings may change)."""

    def __init__(self, seconds: Callable[[], float], size: int = 10_000):
        self.seconds, self.size = seconds, size
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            if len(self._entries) >= self.size:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.seconds(), value)

    def forget(self, stale: Callable[[Any], bool]) -> None:
        """Drop the entries whose value is ``stale``."""
        with self._lock:
            for key in [key for key, (_, value) in self._entries.items() if stale(value)]:
                del self._entries[key]


_users = _Cache(lambda: settings.N3_PERMISSION_CACHE_SECONDS)
_models = _Cache(lambda: settings.N3_AGENT_CACHE_SECONDS)


def cached_user(*, key: str) -> tuple[bool, Optional[AbstractBaseUser]]:
    """(found, user) from the cache alone (no database): the event loop asks it before sending a thread to
    authenticate()."""
    found, user = _users.get(key)
    if found:
        _check_may_serve(user)
    return found, user


def authenticate(*, key: str) -> Optional[AbstractBaseUser]:
    """The active user of API token ``key`` (None: no such token); Forbidden without SERVE_PERMISSION. Answers are
    reused for N3_PERMISSION_CACHE_SECONDS, like the API's permission sets."""
    found, user = _users.get(key)
    if not found:
        token = Token.objects.select_related("user").filter(key=key).first()
        user = token.user if token is not None and token.user.is_active else None
        if user is not None:
            user.n3_may_serve = user.has_perm(SERVE_PERMISSION)
        _users.put(key, user)
    _check_may_serve(user)
    return user


def _check_may_serve(user: Optional[AbstractBaseUser]) -> None:
    if user is not None and not user.n3_may_serve:
        raise Forbidden(f"This token's user lacks the permission {SERVE_PERMISSION} needed to be served")


@dataclass(frozen=True)
class Served:
    """The version that answers a request: its key ("agent:v3", the answer's ``model``) and policy directory."""

    key: str
    version: PolicyVersion
    policy_dir: Path
    record: bool  # the agent's record_served switch


def cached_model(*, model: str, user: str = "") -> Optional[Served]:
    """resolve_model's answer from the cache alone (None: ask resolve_model). A version whose policy directory is
    gone (deleting a version removes its files) is forgotten at once: resolve_model answers NotFound or another
    version before anything generates."""
    served = _models.get((model, user))[1]
    if served is not None and not served.policy_dir.is_dir():
        forget_agent(served.version.agent.name)
        return None
    return served


def forget_agent(name: str) -> None:
    """Forget the cached deployment of agent ``name`` (a version of it was deleted)."""
    _models.forget(lambda served: served is not None and served.version.agent.name == name)


def resolve_model(*, model: str, user: str = "") -> Served:
    """``model`` "agent" (its traffic split, sticky by ``user``, else its active version) or "agent:vN" (that
    version, which must be trained). NotFound otherwise. Answers are reused for N3_AGENT_CACHE_SECONDS (a promotion
    or a new split reaches the inference process within that time), except a split's choice for a request without
    ``user``, which is drawn anew each time."""
    name, _, pinned = model.partition(":")
    if pinned:
        version = get_policy_version(agent_name=name, version=pinned)
        if version.status != PolicyVersion.Status.TRAINED:
            raise NotFound(f"Version {pinned} of agent '{name}' is {version.status}: only trained versions are served")
        random_choice = False
    else:
        agent = Agent.objects.select_related("active_version").filter(name=name).first() or get_agent(name=name)
        version = version_for(agent, user or None)
        if version is None:
            raise NotFound(f"Agent '{name}' has no deployed version: promote a trained one, or ask for '{name}:vN'")
        version.agent = agent
        random_choice = bool(agent.traffic) and not user
    policy_dir = absolute_path(version.model_path) if version.model_path else None
    if policy_dir is None or not policy_dir.is_dir():
        raise NotFound(f"Version {version.version} of agent '{name}' has no policy files at "
                       f"{version.model_path or '(no path recorded)'}")
    served = Served(key=f"{name}:{version.version}", version=version, policy_dir=policy_dir,
                    record=version.agent.record_served)
    if not random_choice:
        _models.put((model, user), served)
    return served


def served_models() -> list[str]:
    """Every model a client may name: each trained version whose policy files are there, and each deployed agent
    whose active version or a version of its split is one of them."""
    files: dict[Agent, list[PolicyVersion]] = {}
    versions = (PolicyVersion.objects.filter(status=PolicyVersion.Status.TRAINED).exclude(model_path="")
                .select_related("agent").order_by("agent__name", "number"))
    for version in versions:
        if absolute_path(version.model_path).is_dir():
            files.setdefault(version.agent, []).append(version)
    names = []
    for agent, served in files.items():
        if any(version.pk == agent.active_version_id or version.version in agent.traffic for version in served):
            names.append(agent.name)
        names += [f"{agent.name}:{version.version}" for version in served]
    return names


def record_served(*, served: Served, prompt: str, response: str, completion_id: str,
                  user: Optional[AbstractBaseUser]) -> Optional[Feedback]:
    """The served response as unscored feedback tied to its version, ``completion_id`` as its run id (a client
    scores it later through PATCH /api/policies/feedback/<agent>/<runId>). None when it cannot be stored (an empty
    response is no feedback record); the response is served all the same. A version deleted while it served (its
    row gone: the foreign key fails) is forgotten, and the response stored without a version."""
    version: Optional[PolicyVersion] = served.version
    for _ in range(2):
        try:
            feedback, _ = record_feedback(
                agent_name=served.version.agent.name, prompt=prompt, response=response, score=None,
                run_id=completion_id, source=Feedback.Source.API, user=user, policy_version=version,
            )
            return feedback
        except (ValidationError, Conflict) as exc:
            logger.warning("Served response %s of %s not recorded: %s", completion_id, served.key, exc)
            return None
        except IntegrityError:
            if version is None:
                raise
            logger.warning("Version %s was deleted while it served %s: recorded without its version", served.key,
                           completion_id)
            forget_agent(served.version.agent.name)
            version = None
    return None
