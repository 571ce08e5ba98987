"""The web process never loads torch, transformers, peft, trl or accelerate: a fresh process serves every admin page
and every API endpoint (a dry run that misses its calibration and one that hits it, training queued and cancelled,
the compare page's samples requested) in the application gunicorn serves (n3site.serve, Django's test client
driving it), then looks at sys.modules."""
import json
import subprocess
import sys

from tests.sites import ROOT, feedback_records, make_site

HEAVY = ("torch", "transformers", "peft", "trl", "accelerate")

# Runs in the fresh process, on the throwaway site's database. Prints one JSON line: what it requested, the
# answers that were server errors, and the heavy libraries it found loaded.
WEB_PROCESS = r"""
import json, sys
import django
django.setup()
from n3site.serve import application  # noqa: F401  (the app gunicorn serves: loads what it loads)
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from feedback.services import record_feedback_batch
from policies.models import Agent, PolicyVersion
from n3_server.rlhf import TrainingConfig
from n3_server.rlhf import timing
from n3_server.rlhf.data import prepare_feedback
from training.services import resolve_training_config
from django.conf import settings

records = json.loads(sys.argv[1])
heavy = tuple(json.loads(sys.argv[2]))
record_feedback_batch(agent_name="bot", records=records)
agent = Agent.objects.get(name="bot")
policy = str(settings.MODELS_DIR / "_base" / "n3-tiny-random")
trained = PolicyVersion.objects.create(agent=agent, number=1, status="trained", model_path=policy, max_steps=2)
other = PolicyVersion.objects.create(agent=agent, number=2, status="trained", model_path=policy, max_steps=2)
boss = get_user_model().objects.create_superuser("boss", password="pw")
token = Token.objects.create(user=boss).key

# A calibration for one config, as a worker would have stored it: that dry run is a hit, the others miss.
hit = {"base_model": "n3-tiny-random", "max_steps": 40, "batch_size": 2, "mini_batch_size": 2}
config = resolve_training_config(agent=agent, overrides=hit)
key = timing.timing_key(config, prepare_feedback(records).records, models_dir=settings.MODELS_DIR)
timing.store_calibration(settings.MODELS_DIR, key, timing.Calibration(1.0, 0.01, 0.01, 0.2, 0.1))

web, api = Client(SERVER_NAME="localhost"), APIClient(SERVER_NAME="localhost")
web.force_login(boss)
api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
answers, errors = [], []

def check(method, client, url, *, expect=None, **kwargs):
    response = getattr(client, method)(url, **kwargs)
    answers.append(f"{method.upper()} {url} {response.status_code}")
    if response.status_code >= 500 or (expect is not None and response.status_code != expect):
        errors.append(f"{method.upper()} {url}: {response.status_code} {response.content[:300]!r}")
    return response

check("get", web, reverse("admin:index"), expect=200)
for model, model_admin in admin.site._registry.items():
    info = (model._meta.app_label, model._meta.model_name)
    check("get", web, reverse("admin:%s_%s_changelist" % info), expect=200)
    check("get", web, reverse("admin:%s_%s_add" % info))
    first = model.objects.first()
    if first is not None:
        check("get", web, reverse("admin:%s_%s_change" % info, args=[first.pk]), expect=200)
        check("get", web, reverse("admin:%s_%s_history" % info, args=[first.pk]), expect=200)
train = reverse("admin:policies_agent_train", args=[agent.pk])
check("get", web, train, expect=200)
form = {"preset": "", "base_model": "n3-tiny-random", "max_steps": "40", "batch_size": "2", "use_lora": "unknown",
        "extra": '{"mini_batch_size": 2}'}
check("post", web, train, data={**form, "preview": "1"}, expect=200)  # the hit
check("post", web, train, data={**form, "max_steps": "40", "batch_size": "4", "preview": "1"}, expect=200)  # a miss
check("post", web, train, data={**form, "confirm": "1"}, expect=302)
for name in ("progress", "charts"):
    check("get", web, reverse(f"admin:policies_policyversion_{name}", args=[trained.pk]), expect=200)
compare = reverse("admin:policies_policyversion_compare", args=[trained.pk])
check("get", web, compare, data={"other": other.pk}, expect=200)
check("post", web, f"{compare}?other={other.pk}", data={"generate": "1"}, expect=302)
check("get", web, compare, data={"other": other.pk}, expect=200)
check("get", web, compare, data={"other": other.pk, "samples": "status"}, expect=200)
queued = PolicyVersion.objects.filter(status="queued").first()
check("post", web, reverse("admin:policies_policyversion_cancel", args=[queued.pk]), expect=302)
check("get", web, reverse("admin:feedback_feedback_import"), expect=200)
check("get", web, reverse("admin:feedback_feedback_export"))
check("get", web, reverse("review:queue"), expect=200)
check("get", web, reverse("review:next"))

dry = {"dryRun": True, "baseModel": "n3-tiny-random", "maxSteps": 40, "batchSize": 2, "miniBatchSize": 2}
sources = []
for body in (dry, {**dry, "batchSize": 4, "maxNewTokens": 12}):
    answer = check("post", api, "/api/policies/train_policy/bot", data=body, format="json", expect=200)
    sources.append(answer.json().get("estimateSource"))
check("post", api, "/api/policies/feedback/bot", data={"prompt": "Hi?", "response": "Hello.", "score": 0.8},
      format="json", expect=201)
started = check("post", api, "/api/policies/train_policy/bot", data={**dry, "dryRun": False}, format="json", expect=202)
version = started.json()["version"]
check("get", api, "/api/policies/bot", expect=200)
check("get", api, f"/api/policies/bot/{version}", expect=200)
check("post", api, f"/api/policies/bot/{version}/cancel", expect=200)
check("get", api, "/api/schema/", expect=200)
check("get", api, "/api/docs/", expect=200)

print(json.dumps({"answers": answers, "errors": errors, "sources": sources,
                  "loaded": [name for name in heavy if name in sys.modules]}))
"""


def test_the_web_process_serves_every_page_and_endpoint_without_torch(tmp_path):
    site = make_site(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", WEB_PROCESS, json.dumps(feedback_records(12)), json.dumps(HEAVY)], cwd=ROOT,
        env=site.env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert not report["errors"], "\n".join(report["errors"])
    assert report["sources"] == ["measured", "rough"]  # a hit and a miss, both answered
    assert len(report["answers"]) > 40
    assert report["loaded"] == [], f"the web process loaded {report['loaded']}"
