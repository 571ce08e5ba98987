"""Issue 20 item 9: "^...$" also matches before a final newline, so "alpha\\n" was a new agent
(POST /api/policies/feedback/alpha%0A -> 201, a second "alpha" in the review picker) and "v1\\n" a version
(GET /api/policies/alpha/v1%0A -> 200). Every route and form that takes an agent name or a version refuses both with
a 4xx and changes nothing; the same requests with the plain names work (so each refusal is about the newline)."""
import io

import pytest
from django.urls import reverse

from feedback.models import Feedback
from policies.models import Agent, PolicyVersion
from tests.users import login, staff

pytestmark = pytest.mark.django_db


@pytest.fixture
def alpha(settings, tmp_path):
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="alpha")
    policy = tmp_path / "alpha" / "v1" / "policy"
    policy.mkdir(parents=True)
    PolicyVersion.objects.create(agent=agent, number=1, status="trained", model_path=str(policy))
    PolicyVersion.objects.create(agent=agent, number=2, status="running")
    for n in range(12):
        Feedback.objects.create(agent=agent, prompt=f"q{n}", response=f"a{n}", score=n / 11, run_id=f"run{n}")
    return agent


@pytest.fixture
def api(make_user, client_for):
    """Every API permission, PATCHing feedback included."""
    from tests.conftest import API_PERMISSIONS
    return client_for(make_user("bot", *API_PERMISSIONS, "feedback.change_feedback"))


RECORD = {"prompt": "What is 2+2?", "response": "4", "score": 0.9}


def api_requests(agent: str, version: str, body_version: str):
    """(method, path, body) of every API route that names an agent or a version: ``agent`` and ``version`` as they
    appear in a path, ``body_version`` in a JSON body."""
    base = "/api/policies"
    return [
        ("post", f"{base}/feedback/{agent}", RECORD),
        ("post", f"{base}/feedback/alpha", {**RECORD, "policyVersion": body_version}),
        ("patch", f"{base}/feedback/{agent}/mine", {"score": 0.1}),
        ("post", f"{base}/train_policy/{agent}", {"dryRun": True}),
        ("post", f"{base}/train_policy/alpha", {"dryRun": True, "initFrom": body_version}),
        ("get", f"{base}/{agent}", None),
        ("get", f"{base}/{agent}/traffic", None),
        ("put", f"{base}/alpha/traffic", {body_version: 1.0}),
        ("get", f"{base}/{agent}/{version}", None),
        ("get", f"{base}/alpha/{version}", None),
        ("post", f"{base}/alpha/{version}/promote", None),
        ("post", f"{base}/alpha/{'v2' if version == 'v1' else 'v2%0A'}/cancel", None),
    ]


def own_record(api) -> None:
    """A record this API user sent (runId "mine"): the one its PATCH may change."""
    assert api.post("/api/policies/feedback/alpha", {**RECORD, "runId": "mine"}, format="json").status_code == 201


def test_every_api_route_refuses_a_name_or_version_ending_in_a_newline(alpha, api):
    own_record(api)
    for method, path, body in api_requests("alpha%0A", "v1%0A", "v1\n"):
        response = getattr(api, method)(path, body, format="json")
        assert 400 <= response.status_code < 500, (method, path, body, response.status_code, response.content[:300])
        assert response.json(), (method, path)  # says what is wrong
    assert list(Agent.objects.values_list("name", flat=True)) == ["alpha"]
    assert Feedback.objects.count() == 13 and Feedback.objects.get(run_id="mine").score == 0.9
    alpha.refresh_from_db()
    assert alpha.active_version is None and not alpha.traffic
    assert not PolicyVersion.objects.get(number=2).cancel_requested


def test_the_same_requests_with_plain_names_work(alpha, api):
    own_record(api)
    ok = {(method, path, str(body)): getattr(api, method)(path, body, format="json").status_code
          for method, path, body in api_requests("alpha", "v1", "v1")}
    assert [k for k, status in ok.items() if status >= 400] == [], ok


def test_forms_refuse_a_name_or_version_ending_in_a_newline(alpha):
    boss = staff("boss")
    boss.is_superuser = True
    boss.save()
    client = login(boss)
    # Agent and import forms strip surrounding whitespace (Django's CharField): "alpha\n" is "alpha".
    response = client.post(reverse("admin:policies_agent_add"), {"name": "alpha\n", "review_overlap": "1"})
    assert response.status_code == 200 and "Agent with this Name already exists" in response.content.decode()
    upload = io.BytesIO(b'{"prompt": "p", "response": "r", "score": 0.5}\n')
    upload.name = "f.jsonl"
    response = client.post(reverse("admin:feedback_feedback_import"), {"agent": "alpha\n", "file": upload})
    assert response.status_code == 302
    assert Feedback.objects.filter(agent=alpha).count() == 13
    # Deploy form: promote "v1\\n", a traffic share for "v1\\n".
    deploy = reverse("admin:policies_agent_deploy", args=[alpha.pk])
    client.post(deploy, {"promote": "v1\n", "confirmed": "1"})
    client.post(deploy, {"share_v1\n": "100"})
    alpha.refresh_from_db()
    assert alpha.active_version is None and not alpha.traffic
    assert list(Agent.objects.values_list("name", flat=True)) == ["alpha"]
    # A form's plain name works: the refusals above are about the newline.
    client.post(deploy, {"promote": "v1", "confirmed": "1"})  # (confirmed: v1 was not evaluated)
    alpha.refresh_from_db()
    assert alpha.active_version.number == 1


def test_a_base_model_hub_id_ending_in_a_newline_is_refused():
    from n3site.exceptions import ServiceError
    from training.services import check_base_model

    check_base_model("gpt2")
    check_base_model("org/model-name")
    for name in ("gpt2\n", "org/model-name\n"):
        with pytest.raises(ServiceError):
            check_base_model(name)
