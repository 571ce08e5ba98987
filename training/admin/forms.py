"""The admin's Train form.

It only gathers the request: the values are checked by the services the REST API's train_policy calls
(training.services), and their ConfigErrors are shown beside the field they name (TrainForm.add_service_error).
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

from django import forms
from django.conf import settings

from n3_server.rlhf import PRESETS, RewardModelConfig, TrainingConfig
from n3_server.rlhf.config import ALGORITHMS
from policies.models import Agent, PolicyVersion

# The fields above the JSON box (they win over its keys).
FORM_FIELDS = (
    "algorithm", "init_from", "promote", "base_model", "max_steps", "learning_rate", "batch_size", "use_lora",
)
PROMOTE_CHOICES = [
    ("never", "never: stays inactive until promoted by hand"),
    ("if_better", "if_better: when its evaluation says it is better than its start"),
    ("always", "always: becomes the active version once trained"),
]
# A camelCase key, as the REST API spells TrainingConfig's fields ("maxSteps", "rewardModelConfig").
_CAMEL = re.compile(r"[a-z][a-z0-9]*(?:[A-Z][a-z0-9]*)+")


def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), name)


def snake_case_config(
    data: dict, *, written: Optional[dict[str, str]] = None, path: str = "", spelled: str = "",
) -> dict:
    """`data` (TrainingConfig fields, snake_case or camelCase, nested rewardModelConfig too) with snake_case keys.

    Only a camelCase spelling of a known field is renamed, so an unknown key reaches the service (which refuses it)
    as it was written. ``written`` collects each key's path as it was written ("reward_model_config.num_epochs" ->
    "rewardModelConfig.numEpochs"), so that an error names the key as the user wrote it. Two spellings of one field
    with different values raise ValidationError naming both."""
    written = {} if written is None else written
    known = {f.name for f in dataclasses.fields(RewardModelConfig if path else TrainingConfig)}
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = _snake(key) if _CAMEL.fullmatch(key) and _snake(key) in known else key
        if name == "reward_model_config" and not path and isinstance(value, dict):
            value = snake_case_config(value, written=written, path=f"{name}.", spelled=f"{key}.")
        if name in result and result[name] != value:
            raise forms.ValidationError(
                f"{written[path + name]} and {spelled}{key} are the same field with different values: give one."
            )
        result[name] = value
        written[path + name] = spelled + key
    return result


class TrainForm(forms.Form):
    """A preset, the algorithm, where to start, whether to promote, and the overrides people change most; anything
    else goes in the JSON box."""

    preset = forms.ChoiceField(required=False, choices=lambda: [("", "— none —")] + [(n, n) for n in PRESETS])
    # Plain text behind a select: the service checks the value (a stale or hand-made one is its error, by name).
    algorithm = forms.CharField(required=False, widget=forms.Select)
    init_from = forms.CharField(required=False, widget=forms.Select, label="Start from (init_from)")
    promote = forms.CharField(required=False, widget=forms.Select, label="Promote when trained")
    base_model = forms.CharField(required=False, help_text="Hub id, local path, or n3-tiny (built locally, offline).")
    max_steps = forms.IntegerField(required=False, min_value=1)
    learning_rate = forms.FloatField(required=False, min_value=0, widget=forms.TextInput(attrs={"size": 10}))
    batch_size = forms.IntegerField(required=False, min_value=1)
    use_lora = forms.NullBooleanField(
        required=False, widget=forms.Select(choices=[("unknown", "as configured"), ("true", "yes"), ("false", "no")]),
        label="Use LoRA",
    )
    extra = forms.CharField(
        required=False, label="Other overrides (JSON)",
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": '{"initKlCoef": 0.5, "target_kl": 3.0}'}),
        help_text="Any TrainingConfig field, in snake_case (max_steps, as manage.py train_policy and the agent's "
                  "default config take them) or camelCase (maxSteps, as the REST API takes them), nested "
                  "reward_model_config / rewardModelConfig too; one field given in both spellings with different "
                  "values is refused. The fields above win over the same keys here.",
    )

    def __init__(self, *args, agent: Optional[Agent] = None, **kwargs):
        super().__init__(*args, **kwargs)
        agent_defaults = (agent.default_training_config or {}) if agent is not None else {}
        # What runs when Base model is left empty (a preset never changes it: services.resolve_training_config).
        self.default_base_model = agent_defaults.get("base_model") or settings.N3_DEFAULT_BASE_MODEL
        self.fields["base_model"].widget.attrs["placeholder"] = self.default_base_model
        self.fields["base_model"].help_text = (
            f"Empty: {self.default_base_model} (the agent's default, else N3_DEFAULT_BASE_MODEL; presets keep it). "
            "Or a hub id, a local path, or n3-tiny (built locally, offline). From a version, leave it empty."
        )
        defaults = {f.name: f.default for f in dataclasses.fields(TrainingConfig)}
        blank = {
            name: ("", f"— as configured (default: {agent_defaults.get(name, defaults[name])}) —")
            for name in ("algorithm", "init_from", "promote")
        }
        self.fields["algorithm"].widget.choices = [blank["algorithm"], *((a, a) for a in ALGORITHMS)]
        self.fields["algorithm"].help_text = (
            "ppo, rloo, grpo and best_of_n train against a reward model fitted on the scores; kto and dpo learn from "
            "the scores themselves (the preview says how many examples or pairs they give). Empty: the JSON box's, "
            "the agent's default, else ppo."
        )
        self.fields["init_from"].widget.choices = [blank["init_from"], *self._starts(agent)]
        self.fields["init_from"].help_text = (
            "Where the policy starts: the base model, or one of the agent's trained versions (its weights, its KL "
            "reference and its evaluation's baseline)."
        )
        self.fields["promote"].widget.choices = [blank["promote"], *PROMOTE_CHOICES]
        self.fields["promote"].help_text = (
            "What happens once it is trained (the version page's promotion note says why)."
        )
        self.written: dict[str, str] = {}  # a JSON key's snake_case path -> as it was written

    @staticmethod
    def _starts(agent: Optional[Agent]) -> list[tuple[str, str]]:
        choices = [("base", "base: the base model")]
        if agent is None:
            return choices
        active = agent.active_version
        if active is not None:
            choices.append(("active", f"active: the active version ({active.version})"))
        trained = PolicyVersion.objects.filter(agent=agent, status=PolicyVersion.Status.TRAINED).order_by("-number")
        choices += [
            (v.version, f"{v.version}{' (active)' if active is not None and v.pk == active.pk else ''}")
            for v in trained.only("number")
        ]
        return choices

    def initial_from_config(self, config: dict) -> dict:
        """Retrain: an earlier version's full config as this form's initial values (the three selects where the
        value is one of their choices, the rest in the JSON box)."""
        known = set(TrainingConfig.field_names())
        config = {k: v for k, v in config.items() if k in known}
        initial = {}
        for name in ("algorithm", "init_from", "promote"):
            if config.get(name) in {value for value, _ in self.fields[name].widget.choices if value}:
                initial[name] = config.pop(name)
        return {**initial, "extra": json.dumps(config, indent=2, sort_keys=True)}

    def clean_extra(self) -> dict:
        text = self.cleaned_data["extra"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"Not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object of TrainingConfig fields.")
        return snake_case_config(value, written=self.written)

    def overrides(self) -> dict:
        """The request's TrainingConfig overrides, snake_case: the JSON box, then the fields above."""
        data = dict(self.cleaned_data["extra"])
        for name in FORM_FIELDS:
            value = self.cleaned_data.get(name)
            if value not in (None, ""):
                data[name] = value
        return data

    def add_service_error(self, exc: Exception) -> None:
        """A refusal by the services shown where it belongs: a ConfigError about a field set above, beside it; about
        a key of the JSON box, under the box, spelled as written there; anything else above the form."""
        errors = getattr(exc, "errors", None) or {}
        if not errors:
            self.add_error(None, str(exc))
            return
        data = dict(self.cleaned_data)  # add_error takes a field out of cleaned_data
        for path, reasons in errors.items():
            for reason in reasons:
                if path in FORM_FIELDS and data.get(path) not in (None, ""):
                    self.add_error(path, f"{path}: {reason}")
                elif path.split(".")[0] in data.get("extra", {}):
                    self.add_error("extra", f"{self.written.get(path, path)}: {reason}")
                else:
                    self.add_error(None, f"{path}: {reason}")
