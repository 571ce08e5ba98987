"""The admin's Train form."""
from __future__ import annotations

import json
from typing import Optional

from django import forms
from django.conf import settings

from n3_server.rlhf import PRESETS
from policies.models import Agent


class TrainForm(forms.Form):
    """A preset plus the overrides people change most; anything else goes in the JSON box."""

    preset = forms.ChoiceField(required=False, choices=lambda: [("", "— none —")] + [(n, n) for n in PRESETS])
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
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": '{"init_kl_coef": 0.5, "target_kl": 3.0}'}),
        help_text="TrainingConfig fields (snake_case); the fields above win over the same keys here.",
    )

    def __init__(self, *args, agent: Optional[Agent] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # What runs when Base model is left empty (a preset never changes it: services.resolve_training_config).
        self.default_base_model = (
            (agent.default_training_config or {}).get("base_model") if agent is not None else None
        ) or settings.N3_DEFAULT_BASE_MODEL
        self.fields["base_model"].widget.attrs["placeholder"] = self.default_base_model
        self.fields["base_model"].help_text = (
            f"Empty: {self.default_base_model} (the agent's default, else N3_DEFAULT_BASE_MODEL; presets keep it). "
            "Or a hub id, a local path, or n3-tiny (built locally, offline)."
        )

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
        return value

    def overrides(self) -> dict:
        data = dict(self.cleaned_data["extra"])
        for name in ("base_model", "max_steps", "learning_rate", "batch_size", "use_lora"):
            value = self.cleaned_data.get(name)
            if value not in (None, ""):
                data[name] = value
        return data
