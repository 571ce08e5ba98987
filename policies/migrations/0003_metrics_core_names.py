"""A version's metrics under the training core's names (the API's camelCase ones are derived at its edge):
rewardMean -> objective/scores, rewardModel {valMse, pearson, ...} -> reward_model {val_mse, val_pearson, ...},
evaluation {winRate, ...} -> {win_rate, ...}. The names are copied here: a migration must not change with the code."""
from django.db import migrations

LATEST = {
    "rewardMean": "objective/scores", "rewardStd": "objective/scores_std", "kl": "objective/kl", "loss": "loss/total",
    "rewardModelLoss": "reward_model_loss", "rewardModel": "reward_model", "durationSeconds": "duration_seconds",
}
REWARD_MODEL = {
    "valMse": "val_mse", "valMseBaseline": "val_mse_baseline", "pearson": "val_pearson", "spearman": "val_spearman",
    "trainLoss": "train_loss", "trainSize": "train_size", "valSize": "val_size", "fitSeconds": "fit_seconds",
    "bestEpoch": "best_epoch",
}
EVALUATION = {
    "scoredBy": "scored_by", "winRate": "win_rate", "winRateCi": "win_rate_ci", "rewardMean": "reward_mean",
    "baselineRewardMean": "baseline_reward_mean", "rewardDiff": "reward_diff", "rewardDiffCi": "reward_diff_ci",
    "responseLength": "response_length", "baselineResponseLength": "baseline_response_length",
    "splitSeed": "split_seed", "heldoutPrompts": "heldout_prompts",
}
SAMPLE = {"baselineResponse": "baseline_response", "baselineScore": "baseline_score"}


def _renamed(data, names):
    return {names.get(key, key): value for key, value in data.items()}


def convert(metrics, forwards):
    """``metrics`` with its names mapped (API -> core when ``forwards``, back otherwise); order kept."""
    def names(table):
        return table if forwards else {new: old for old, new in table.items()}

    metrics = _renamed(metrics, names(LATEST))
    reward_model = "reward_model" if forwards else "rewardModel"
    if isinstance(metrics.get(reward_model), dict):
        metrics[reward_model] = _renamed(metrics[reward_model], names(REWARD_MODEL))
    evaluation = metrics.get("evaluation")
    if isinstance(evaluation, dict):
        evaluation = _renamed(evaluation, names(EVALUATION))
        if isinstance(evaluation.get("samples"), list):
            evaluation["samples"] = [
                _renamed(s, names(SAMPLE)) if isinstance(s, dict) else s for s in evaluation["samples"]
            ]
        metrics["evaluation"] = evaluation
    return metrics


def _migrate(apps, forwards):
    PolicyVersion = apps.get_model("policies", "PolicyVersion")
    for version in PolicyVersion.objects.only("metrics").iterator():
        if isinstance(version.metrics, dict) and version.metrics:
            converted = convert(version.metrics, forwards)
            if converted != version.metrics:
                PolicyVersion.objects.filter(pk=version.pk).update(metrics=converted)


def forwards(apps, schema_editor):
    _migrate(apps, forwards=True)


def backwards(apps, schema_editor):
    _migrate(apps, forwards=False)


class Migration(migrations.Migration):

    dependencies = [
        ("policies", "0002_training_steps_snapshot_bound"),
    ]

    operations = [
        migrations.RunPython(forwards, backwards),
    ]
