"""The README's curl commands (the spec's Quick Start with the auth header), run as written against a real server.

The commands are read out of README.md, so the documentation cannot drift from what the server does: each block
is run by bash with curl against gunicorn serving a throwaway installation (tests/sites.py), with
``http://localhost:8000`` pointed at the test server's port.
"""
import json
import re
import shutil
import subprocess
import urllib.request

import pytest

from tests.sites import LEAN_CONFIG, ROOT, make_site

README = ROOT / "README.md"
pytestmark = pytest.mark.slow


def readme_curls() -> dict[str, str]:
    """The README's curl commands, keyed by method and API path with its query: 'POST feedback/my_agent',
    'GET my_agent | jq', 'GET ' (the list of agents), ...
    (the jq line of the evaluation section is 'GET my_agent | jq (evaluation)')."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = {}
    for block in blocks:
        for command in re.split(r"\n(?=curl )", block.strip()):
            if not command.startswith("curl "):
                continue
            method = re.search(r"-X (\w+)", command)[1] if "-X " in command else "GET"
            path = re.search(r"http://localhost:8000/api/policies/([^\s\"]*)", command).group(1)
            key = f"{method} {path}"
            if '"dryRun": true' in command:
                key += " (dry run)"
            if "| jq" in command:
                key += " | jq (evaluation)" if ".metrics.evaluation" in command else " | jq"
            commands.setdefault(key, command)  # the first of a kind: the Quick Start's
    return commands


@pytest.fixture
def server(tmp_path):
    site = make_site(tmp_path)
    token = site.api_token("ops", perms=(
        "feedback.add_feedback", "feedback.change_feedback", "feedback.view_feedback", "policies.add_policyversion",
        "policies.change_policyversion", "policies.view_policyversion",
    ))
    with site.gunicorn() as server:
        yield site, server.base_url, token


def run(command: str, base: str, token: str) -> str:
    result = subprocess.run(
        ["bash", "-c", "set -o pipefail; " + command.replace("http://localhost:8000", base)],
        env={"TOKEN": token, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, (command, result.stdout, result.stderr)
    return result.stdout


def test_the_readme_commands_match_the_spec_quick_start():
    curls = readme_curls()
    assert set(curls) == {
        "POST feedback/my_agent", "PATCH feedback/my_agent/run_123", "POST train_policy/my_agent (dry run)",
        "POST train_policy/my_agent",
        "GET my_agent", "GET my_agent | jq", "GET my_agent | jq (evaluation)", "GET my_agent/v1",
        "GET my_agent/v1/events?limit=100", "POST my_agent/v1/cancel", "POST my_agent/v2/promote",
        "PUT my_agent/traffic", "GET my_agent/traffic",
        "GET ", "GET feedback/my_agent?scored=true&pageSize=2", "GET feedback/my_agent/run_123",
        "GET feedback/my_agent?format=jsonl",
        "GET my_agent/compare?a=v1&b=v2", "POST my_agent/comparisons", "GET my_agent/comparisons/1",
    }
    assert all('-H "Authorization: Token $TOKEN"' in command for command in curls.values())
    assert '"dryRun": false' in curls["POST train_policy/my_agent"]


def test_the_readme_curls_work_against_a_running_server(server):
    site, base, token = server
    curls = readme_curls()

    stored = json.loads(run(curls["POST feedback/my_agent"], base, token))
    assert stored["runId"] == "run_123" and stored["score"] == 0.9 and stored["agent"] == "my_agent"
    # A retry of the same request (same runId) stores nothing twice.
    assert json.loads(run(curls["POST feedback/my_agent"], base, token))["id"] == stored["id"]
    # The end user's thumbs up, later: the token's user is its reviewer.
    scored = json.loads(run(curls["PATCH feedback/my_agent/run_123"], base, token))
    assert (scored["id"], scored["score"], scored["notes"]) == (stored["id"], 1.0, "user: thumbs up")
    assert scored["reviewedAt"]

    # Too little feedback: the spec's error text. Then nine more records through the API.
    too_few = subprocess.run(
        ["curl", "-s", "-X", "POST", f"{base}/api/policies/train_policy/my_agent",
         "-H", f"Authorization: Token {token}", "-H", "Content-Type: application/json", "-d", '{"dryRun": true}'],
        capture_output=True, text=True,
    )
    assert json.loads(too_few.stdout) == {"detail": "Insufficient feedback: 1 samples (minimum 10 required)"}
    for i in range(9):
        body = json.dumps(
            {"prompt": f"What is {i} plus {i}?", "response": f"{2 * i}.", "score": 0.1 * i, "runId": f"r{i}"}
        )
        request = urllib.request.Request(
            f"{base}/api/policies/feedback/my_agent", data=body.encode(), method="POST",
            headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(request).status == 201
    # The spec's bodies name no base model: the operator points the agent at the tiny offline one.
    site.shell("from policies.models import Agent; "
               f"Agent.objects.filter(name='my_agent').update(default_training_config={LEAN_CONFIG!r})")

    dry = json.loads(run(curls["POST train_policy/my_agent (dry run)"], base, token))
    assert dry["status"] == "dry_run" and dry["feedbackCount"] == 10 and dry["estimatedSteps"] == 1000
    assert dry["estimatedTimeMinutes"] > 0 and dry["modelConfig"]["learning_rate"] == 1e-5

    queued = json.loads(run(curls["POST train_policy/my_agent"], base, token))
    assert queued["status"] == "queued" and queued["version"] == "v1"

    listed = json.loads(run(curls["GET my_agent"], base, token))
    assert [(v["version"], v["status"]) for v in listed] == [("v1", "queued")]
    if shutil.which("jq"):
        assert json.loads(run(curls["GET my_agent | jq"], base, token)) == {"version": "v1", "reward": None}
        # Not trained yet, so not evaluated: jq prints nulls.
        assert json.loads(run(curls["GET my_agent | jq (evaluation)"], base, token)) == {
            "version": "v1", "better": None, "verdict": None,
        }
    assert json.loads(run(curls["GET my_agent/v1"], base, token))["policyId"] == queued["policyId"]
    assert json.loads(run(curls["POST my_agent/v1/cancel"], base, token))["status"] == "cancelled"
    events = json.loads(run(curls["GET my_agent/v1/events?limit=100"], base, token))  # cancelled while queued
    assert [(e["type"], e["data"].get("status")) for e in events["results"]] == [("queued", None), ("end", "cancelled")]

    # Deploy: two trained versions (rows only: deployment reads the status, not the files) to promote and split.
    site.shell("from policies.models import Agent, PolicyVersion; agent = Agent.objects.get(name='my_agent'); "
               "[PolicyVersion.objects.create(agent=agent, number=n, status='trained') for n in (2, 3)]")
    promoted = json.loads(run(curls["POST my_agent/v2/promote"], base, token))
    assert promoted == {"agent": "my_agent", "activeVersion": "v2", "traffic": {}, "recordServed": False,
                        "warning": "v2 is not known to be better than the model it started from: it was not "
                                   "evaluated against its start"}
    split = {"agent": "my_agent", "activeVersion": "v2", "traffic": {"v2": 0.9, "v3": 0.1}, "recordServed": False}
    assert json.loads(run(curls["PUT my_agent/traffic"], base, token)) == split
    assert json.loads(run(curls["GET my_agent/traffic"], base, token)) == split

    # Read it back: the agents, a page of scored feedback, one record, the export (written to the working directory).
    assert json.loads(run(curls["GET "], base, token)) == [
        {**split, "feedbackCount": 10, "scoredCount": 10, "versionCount": 3}]
    page = json.loads(run(curls["GET feedback/my_agent?scored=true&pageSize=2"], base, token))
    assert [record["runId"] for record in page["results"]] == ["run_123", "r0"] and page["next"]
    assert json.loads(run(curls["GET feedback/my_agent/run_123"], base, token))["reviews"][0]["score"] == 1.0
    run(f"cd {site.root} && " + curls["GET feedback/my_agent?format=jsonl"], base, token)
    assert [json.loads(line)["runId"] for line in (site.root / "my_agent.jsonl").read_text().splitlines()] == [
        "run_123", *(f"r{i}" for i in range(9))]

    # Compare two versions, a blind comparison: v1 and v2 trained, with policy directories (rows and empty folders:
    # nothing loads them here; the comparison's job waits in the queue), and a prompt that came after v1's training.
    site.shell("from django.conf import settings; from policies.models import PolicyVersion; "
               "from feedback.models import Feedback; "
               "Feedback.objects.create(agent_id=PolicyVersion.objects.get(number=1).agent_id, prompt='New?', "
               "response='Yes.'); "
               "[(settings.MODELS_DIR / f'my_agent/v{n}/policy').mkdir(parents=True) for n in (1, 2)]; "
               "[PolicyVersion.objects.filter(agent__name='my_agent', number=n).update("
               "status='trained', model_path=str(settings.MODELS_DIR / f'my_agent/v{n}/policy')) for n in (1, 2)]")
    compared = json.loads(run(curls["GET my_agent/compare?a=v1&b=v2"], base, token))
    assert (compared["a"]["version"], compared["b"]["version"], compared["blindComparison"]) == ("v1", "v2", None)
    assert compared["humanScoreDifference"] == {"difference": None, "ci": None, "preferred": None}
    started = json.loads(run(curls["POST my_agent/comparisons"], base, token))
    assert (started["id"], started["status"], started["requested"]) == (1, "generating", 20) and started["prompts"]
    assert json.loads(run(curls["GET my_agent/comparisons/1"], base, token))["result"]["remaining"] == started[
        "prompts"]
