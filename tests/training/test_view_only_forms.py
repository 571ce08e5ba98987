"""Issue 20 item 8: a staff user who may only *view* agents, versions and feedback POSTs every admin form that
queues worker jobs, writes files or changes what is served. Each answers 403 (an admin action the user may not run
is simply not one of theirs), no job is queued, no file appears or goes, no row changes. Before, the compare page's
"Generate samples" form answered 302, queued both versions' sample jobs and wrote files in their directories."""
import io
import os

import pytest
from django.urls import reverse
from django_q.models import OrmQ

from feedback.models import Comparison, Feedback
from policies.models import Agent, PolicyVersion
from tests.users import login, staff

pytestmark = pytest.mark.django_db


def files_under(root) -> list[tuple[str, int]]:
    return sorted((os.path.join(d, f), os.path.getsize(os.path.join(d, f))) for d, _, fs in os.walk(root) for f in fs)


@pytest.fixture
def world(tmp_path, settings):
    settings.MODELS_DIR = tmp_path
    agent = Agent.objects.create(name="support")
    versions = []
    for number in (1, 2):
        policy = tmp_path / "support" / f"v{number}" / "policy"
        policy.mkdir(parents=True)
        (policy / "config.json").write_text("{}")
        versions.append(PolicyVersion.objects.create(
            agent=agent, number=number, status="trained", model_path=str(policy), config={"seed": 42}))
    running = PolicyVersion.objects.create(agent=agent, number=3, status="running")
    for n in range(12):
        Feedback.objects.create(agent=agent, prompt=f"question {n}", response=f"answer {n}", score=n / 11)
    return agent, versions, running


def forms(agent, versions, running):
    """(what, url, data) for every admin POST that queues work, writes or deletes files, or changes serving."""
    v1, v2 = versions
    compare = reverse("admin:policies_policyversion_compare", args=[v2.pk]) + f"?other={v1.pk}"
    return [
        ("train: dry run", reverse("admin:policies_agent_train", args=[agent.pk]), {"max_steps": "2"}),
        ("train: confirm", reverse("admin:policies_agent_train", args=[agent.pk]), {"max_steps": "2", "confirm": "1"}),
        ("promote", reverse("admin:policies_agent_deploy", args=[agent.pk]), {"promote": "v1"}),
        ("traffic", reverse("admin:policies_agent_deploy", args=[agent.pk]), {"share_v1": "50", "share_v2": "50"}),
        ("cancel", reverse("admin:policies_policyversion_cancel", args=[running.pk]), {}),
        ("generate samples", compare, {"generate": "1"}),
        ("blind comparison", compare, {"blind": "1", "count": "3"}),
        ("delete version", reverse("admin:policies_policyversion_delete", args=[v1.pk]), {"post": "yes"}),
        ("delete agent", reverse("admin:policies_agent_delete", args=[agent.pk]), {"post": "yes"}),
        ("import feedback", reverse("admin:feedback_feedback_import"),
         {"agent": "support", "format": "jsonl",
          "file": io.BytesIO(b'{"prompt": "p", "response": "r", "score": 0.5}\n')}),
    ]


def test_view_only_staff_start_no_job_and_touch_no_file(world, settings):
    agent, versions, running = world
    viewer = staff("viewer", "policies.view_agent", "policies.view_policyversion", "feedback.view_feedback")
    client = login(viewer)
    # They can see the pages these forms are on.
    compare = reverse("admin:policies_policyversion_compare", args=[versions[1].pk])
    page = client.get(compare, {"other": versions[0].pk})
    assert page.status_code == 200
    # ... without the buttons that would answer 403.
    assert 'name="generate"' not in page.content.decode() and 'id="n3-blind-start"' not in page.content.decode()
    assert "Starting a blind comparison needs the permission to change versions" in page.content.decode()
    before = files_under(settings.MODELS_DIR)
    rows_before = (Feedback.objects.count(), PolicyVersion.objects.count(), Agent.objects.count())
    for what, url, data in forms(agent, versions, running):
        for item in data.values():
            if hasattr(item, "seek"):
                item.seek(0)
        assert client.post(url, data).status_code == 403, what
    # The admin actions that queue training or change scores are not theirs to run.
    client.post(reverse("admin:policies_agent_changelist"), {"action": "train_now", "_selected_action": [agent.pk]})
    client.post(reverse("admin:feedback_feedback_changelist"),
                {"action": "clear_score", "_selected_action": list(Feedback.objects.values_list("pk", flat=True))})
    assert OrmQ.objects.count() == 0
    assert files_under(settings.MODELS_DIR) == before
    assert (Feedback.objects.count(), PolicyVersion.objects.count(), Agent.objects.count()) == rows_before
    assert not Comparison.objects.exists()
    assert Feedback.objects.filter(score__isnull=True).count() == 0
    agent.refresh_from_db()
    running.refresh_from_db()
    assert agent.active_version is None and not running.cancel_requested


def test_the_same_forms_work_with_the_change_permission(world, settings):
    """The walk above is meaningful: an engineer who may change versions queues the sample jobs it refuses."""
    agent, versions, running = world
    engineer = staff("eng", "policies.view_agent", "policies.view_policyversion", "policies.change_policyversion",
                     "feedback.view_feedback")
    v1, v2 = versions
    url = reverse("admin:policies_policyversion_compare", args=[v2.pk]) + f"?other={v1.pk}"
    page = login(engineer).get(url).content.decode()
    assert 'name="generate"' in page and 'id="n3-blind-start"' in page
    assert login(engineer).post(url, {"generate": "1"}).status_code == 302
    assert {t.func() for t in OrmQ.objects.all()} == {"training.tasks.generate_version_samples"}
