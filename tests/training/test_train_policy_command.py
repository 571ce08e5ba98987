"""manage.py train_policy: in-process training with progress, --dry-run, --async, and errors without tracebacks."""
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django_q.models import OrmQ

from feedback import services as feedback_services
from policies.models import Agent, PolicyVersion
from tests.sites import LEAN_CONFIG, ROOT, feedback_records, tmp_models_dir

pytestmark = pytest.mark.django_db


@pytest.fixture
def agent(tmp_path, settings):
    """An agent with 12 scored records, trained on n3-tiny-random into a fresh MODELS_DIR."""
    settings.MODELS_DIR = tmp_models_dir(tmp_path)
    feedback_services.record_feedback_batch(agent_name="bot", records=feedback_records(12))
    Agent.objects.filter(name="bot").update(default_training_config=LEAN_CONFIG)
    return Agent.objects.get(name="bot")


def train_policy(*args: str) -> str:
    out = StringIO()
    call_command("train_policy", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.slow


def test_trains_in_process_and_records_the_version_like_the_api(agent, capsys):
    out = train_policy("bot", "--max-steps", "2", "--learning-rate", "1e-4", "--set", "max_new_tokens=6")

    version = PolicyVersion.objects.get()
    assert (version.number, version.status, version.step, version.max_steps) == (1, "trained", 2, 2)
    assert (version.config["learning_rate"], version.config["max_new_tokens"]) == (1e-4, 6)
    assert version.config["reward_model_config"]["num_epochs"] == 1  # the agent's defaults still apply
    assert "bot v1 trained" in out and f"Policy: {version.model_path}" in out
    # the version's evaluation against its base on the held-out prompts, in words
    assert "Evaluation: " in out and "its start (base model n3-tiny-random): win rate" in out, out
    assert (Path(version.model_path) / "config.json").exists()
    assert list(version.steps.values_list("step", flat=True)) == [1, 2]
    bars = capsys.readouterr().err  # tqdm draws on stderr
    assert "reward model" in bars and "PPO" in bars and "2/2" in bars and "KL" in bars


@pytest.mark.slow  # with nothing measured yet, the CLI measures in its own process (a miniature run)
def test_dry_run_prints_the_estimate_and_creates_nothing(agent):
    out = train_policy("bot", "--dry-run", "--max-steps", "40")

    assert "12 scored samples, score 0.500 ± 0.400" in out
    assert "Steps:           40" in out and "minutes on this machine" in out
    assert '"base_model": "n3-tiny-random"' in out
    assert not PolicyVersion.objects.exists()


def test_async_queues_the_job_for_a_worker(agent):
    out = train_policy(
        "bot", "--async", "--preset", "low_memory", "--base-model", "n3-tiny-random", "--batch-size", "4"
    )

    version = PolicyVersion.objects.get()
    assert (version.status, version.config["lora_r"], version.config["batch_size"]) == ("queued", 4, 4)
    assert [q.task_id() for q in OrmQ.objects.all()] == [version.task_id]
    assert f"Queued bot v1 (policy id {version.policy_id}, 12 feedback samples, 300 steps)" in out
    assert "manage.py qcluster" in out


@pytest.mark.parametrize("args, message", [
    (["ghost"], "Agent 'ghost' not found"),
    (["bot", "--learning-rate", "-1"], "learning_rate must be a positive number, got -1.0"),
    (["bot", "--preset", "fastest"], "Unknown preset 'fastest'; choose one of quick_test, production"),
    (["bot", "--set", "max_new_token=8"], "Unknown config field(s): max_new_token"),
    (["bot", "--set", "nonsense"], "--set takes FIELD=VALUE, got 'nonsense'"),
    (["bot", "--dry-run", "--async"], "--dry-run and --async exclude each other."),
    ([], "Name the agent to train"),
])
def test_bad_input_is_a_clear_command_error(agent, args, message):
    with pytest.raises(CommandError) as error:
        train_policy(*args)
    assert message in str(error.value)
    assert not PolicyVersion.objects.exists()


def test_too_little_feedback_is_refused(agent):
    feedback_services.record_feedback_batch(agent_name="small", records=feedback_records(5))

    with pytest.raises(CommandError, match=r"Insufficient feedback: 5 samples \(minimum 10 required\)"):
        train_policy("small")


@pytest.mark.slow


def test_a_failed_training_is_reported_with_its_reason(agent, tmp_path):
    with pytest.raises(CommandError) as error:
        train_policy("bot", "--max-steps", "2", "--base-model", str(tmp_path / "missing"))

    version = PolicyVersion.objects.get()
    assert version.status == "failed"
    assert str(error.value).startswith("bot v1 failed: Base model") and "missing" in str(error.value)


@pytest.mark.slow


def test_the_command_line_prints_errors_without_a_traceback(tmp_path):
    env = {"DJANGO_SETTINGS_MODULE": "n3site.settings", "SECRET_KEY": "x", "N3_VAR_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)

    result = subprocess.run([sys.executable, "manage.py", "train_policy", "ghost"], cwd=ROOT, env=env,
                            capture_output=True, text=True)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        "CommandError: Agent 'ghost' not found (agents are created by their first feedback)."
    )
    help_text = subprocess.run([sys.executable, "manage.py", "help", "train_policy"], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=True).stdout
    for option in ("--dry-run", "--async", "--preset", "--max-steps", "--learning-rate", "--base-model",
                   "--batch-size", "--set"):
        assert option in help_text
    assert "--version-id" not in help_text  # internal: the job's child process
