"""The admin's Train form."""
from __future__ import annotations

import json

from django import forms

from training.rlhf import PRESETS


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
