"""manage.py build_base_model (what bin/demo runs before its services): progress about every 100 steps through the
whole build, where the demo's old filter printed "step 0 of 801" and then nothing for about 3 minutes, and no raw
log line of the build module in its output."""
import io

from django.core.management import call_command

from n3_server.rlhf.progress import Progress
from training.management.commands.build_base_model import progress_lines


def n3_tiny_notices() -> list[Progress]:
    """What building n3-tiny (800 pretraining steps) reports: the tokenizer, every 10th step from 1, the end."""
    notices = [Progress("base_model", 0, 801, {}, "Building n3-tiny: training the tokenizer")]
    notices += [Progress("base_model", step + 1, 801, {"loss": 5.0 - step / 200}, "Pretraining n3-tiny")
                for step in range(800) if step % 10 == 0 or step == 799]
    return [*notices, Progress("base_model", 801, 801, {"final_loss": 1.0}, "Built n3-tiny")]


def test_the_build_shows_progress_about_every_100_steps():
    lines: list[str] = []
    show = progress_lines(lines.append, every=100)
    for notice in n3_tiny_notices():
        show(notice)
    steps = [int(line.split("step ")[1].split(" of")[0]) for line in lines]
    assert lines[0] == "  Building n3-tiny: training the tokenizer: step 0 of 801"
    assert lines[1] == "  Pretraining n3-tiny: step 1 of 801, loss 5.00"
    assert lines[-1] == "  Built n3-tiny: step 801 of 801"
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 100  # never more than 100 steps without a line
    assert len(lines) <= 12  # and not a line per notice


def test_build_base_model_builds_once_and_prints_no_log_line(settings, tmp_path, caplog):
    settings.MODELS_DIR = tmp_path
    caplog.set_level("INFO")
    out = io.StringIO()
    call_command("build_base_model", "n3-tiny-random", stdout=out)
    assert out.getvalue().splitlines() == [
        "  Building n3-tiny-random: training the tokenizer: step 0 of 1",
        "  Built n3-tiny-random: step 1 of 1",
        f"  ready at {tmp_path / '_base' / 'n3-tiny-random'}",
    ]
    assert not [r for r in caplog.records if r.name == "n3_server.rlhf.base_models"]  # LOG_LEVEL=INFO prints them
    again = io.StringIO()
    call_command("build_base_model", "n3-tiny-random", stdout=again)  # built: nothing to do
    assert again.getvalue().splitlines() == [f"  ready at {tmp_path / '_base' / 'n3-tiny-random'}"]
