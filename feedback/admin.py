"""Feedback in the admin: the reviewers' list (filters, inline scoring, bulk actions) and import/export."""
from __future__ import annotations

import re

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ActionForm
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.defaultfilters import linebreaksbr
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import mark_safe
from django.utils.text import Truncator

from n3_server.rlhf.records import FIELDS, check_score, record_problems
from n3site.exceptions import ServiceError
from policies.models import Agent

from . import importexport, rendering, review, services
from .models import SCORE_BANDS, Feedback, band_q


class ScoreBandFilter(admin.SimpleListFilter):
    """The spec's five scoring bands, plus unscored (the review queue) and scored."""

    title = "score"
    parameter_name = "score_band"

    def lookups(self, request, model_admin):
        return [("unscored", "Unscored (awaiting review)"), ("scored", "Scored")] + [
            (band.key, f"{band.quality} ({band.range_label})") for band in SCORE_BANDS
        ]

    def queryset(self, request, queryset):
        value = self.value()
        if value == "unscored":
            return queryset.filter(score__isnull=True)
        if value == "scored":
            return queryset.filter(score__isnull=False)
        for band in SCORE_BANDS:
            if value == band.key:
                return queryset.filter(band_q(band))
        return queryset


class ScoreActionForm(ActionForm):
    """The admin's action bar, plus the score that "Set score" applies.

    A plain text field: if it refused bad input itself, Django would drop the action with a vague
    "No action selected"; ``set_score`` checks it and says what is wrong.
    """

    score = forms.CharField(
        required=False, label="score",
        widget=forms.NumberInput(
            attrs={"step": "0.05", "min": "0", "max": "1", "placeholder": "0–1", "style": "width:5em"}
        ),
    )


class FeedbackForm(forms.ModelForm):
    """The add/change form: the records module's rules (as the API), and the reviewer's score check, on the fields
    the form has (instead of the database's constraint error)."""

    def clean_score(self):
        score = self.cleaned_data.get("score")
        if score is None:
            return None  # no score: back in the review queue
        try:
            return check_score(score)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self):
        cleaned = super().clean()
        record = {name: cleaned.get(name, getattr(self.instance, name, "")) for name in FIELDS}
        # The version is a row here (chosen among the agent's versions below), not a name to check.
        record.update(score=None, policy_version=None)
        for field, message in record_problems(record):
            if field in self.fields and field not in self.errors:
                self.add_error(field, message[:1].upper() + message[1:])
        version, agent = cleaned.get("policy_version"), cleaned.get("agent")
        if "policy_version" in self.fields and version and agent and version.agent_id != agent.pk:
            self.add_error("policy_version", f"{version.version} is a version of agent '{version.agent.name}', "
                                             f"not of '{agent.name}'")
        return cleaned


class FeedbackListForm(FeedbackForm):
    """Compact widgets for scoring and annotating straight from the list."""

    class Meta:
        model = Feedback
        fields = ["score", "notes"]
        widgets = {
            "score": forms.NumberInput(attrs={"step": "0.05", "min": "0", "max": "1", "style": "width:5em"}),
            "notes": forms.Textarea(attrs={"rows": 2, "cols": 24}),
        }


class ImportForm(forms.Form):
    agent = forms.CharField(
        max_length=100, help_text="Existing agent, or a new name (created on first feedback).",
        widget=forms.TextInput(attrs={"list": "n3-agent-names", "autocomplete": "off"}),
    )
    file = forms.FileField(help_text="JSONL (one JSON object per line) or CSV with a header row.")
    format = forms.ChoiceField(
        choices=[("", "From the file name"), ("jsonl", "JSONL"), ("csv", "CSV")], required=False,
    )


TOOLTIP_CHARS = 1000  # a list's hover text: the whole of most prompts and responses, not a whole document


def _preview(text: str, chars: int) -> str:
    """A list cell: ``text`` cut to ``chars`` characters, the whole (up to TOOLTIP_CHARS) on hover."""
    return format_html('<span title="{}">{}</span>', Truncator(text).chars(TOOLTIP_CHARS), Truncator(text).chars(chars))


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    # Fits 1280 px beside the filters (tests/browser/test_defects_browser.py): texts cut short with the whole in a
    # tooltip, the version as "v3" (the agent is its own column), a short date; n3.css narrows the notes box.
    list_display = [
        "prompt_preview", "response_preview", "score", "notes", "agent_name", "reviewer", "source", "version",
        "created",
    ]
    form = FeedbackForm
    list_display_links = ["prompt_preview"]
    list_editable = ["score", "notes"]
    list_filter = [
        "agent", ScoreBandFilter, ("reviewer", admin.RelatedOnlyFieldListFilter), "source",
        ("policy_version", admin.RelatedOnlyFieldListFilter), "created_at",
    ]
    list_select_related = ["agent", "reviewer", "policy_version"]
    list_per_page = 50
    search_fields = ["prompt", "response", "=run_id"]
    search_help_text = "Searches prompts and responses (and exact run ids)."
    date_hierarchy = "created_at"
    action_form = ScoreActionForm
    actions = ["set_score", "clear_score", "delete_selected", "export_jsonl", "export_csv"]
    readonly_fields = [
        "source", "reviewer", "reviewed_at", "review_list", "claimed_by", "claimed_until", "created_at", "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["agent", "prompt", "response"]}),
        ("Review", {"fields": ["score", "notes", "reviewer", "reviewed_at", "review_list"]}),
        ("Origin", {"fields": ["run_id", "source", "policy_version", "created_at", "updated_at"]}),
        ("Review queue", {"fields": ["claimed_by", "claimed_until"], "classes": ["collapse"]}),
    ]
    raw_id_fields = ["policy_version"]

    @admin.display(description="reviews")
    def review_list(self, obj: Feedback):
        """The item's reviews, one per reviewer (read-only: reviewers change theirs in the queue or on "my recent
        reviews"; a score set above is a lead's decision and becomes their review)."""
        reviews = list(obj.reviews.select_related("reviewer").order_by("created_at", "id")) if obj.pk else []
        if not reviews:
            return "none"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((r.reviewer.get_username() if r.reviewer else "(deleted user)", f"{r.score:g}", r.notes,
              f"{r.updated_at:%Y-%m-%d %H:%M}") for r in reviews),
        )
        overlap = obj.agent.review_overlap
        return format_html(
            '<table class="n3-reviews"><thead><tr><th>reviewer</th><th>score</th><th>notes</th><th>saved</th></tr>'
            "</thead><tbody>{}</tbody></table><p>{} of {} reviews (the agent's review overlap){}</p>",
            rows, len(reviews), overlap, "; the score is their mean unless a lead set it" if overlap > 1 else "",
        )

    # -- list ------------------------------------------------------------------------------
    @admin.display(description="prompt")
    def prompt_preview(self, obj: Feedback) -> str:
        return _preview(obj.prompt, 70)

    @admin.display(description="response")
    def response_preview(self, obj: Feedback) -> str:
        return _preview(obj.response, 90)

    @admin.display(description="agent", ordering="agent__name")
    def agent_name(self, obj: Feedback) -> str:
        """The name, breakable after its underscores and hyphens (customer_/support_/agent) in a narrow column."""
        parts = re.split(r"(?<=[_-])", obj.agent.name)
        return format_html_join(mark_safe("<wbr>"), "{}", ((part,) for part in parts))

    @admin.display(description="version", ordering="policy_version__number")
    def version(self, obj: Feedback) -> str:
        return obj.policy_version.version if obj.policy_version else "—"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Feedback) -> str:
        return format_html('<span title="{}">{}</span>', obj.created_at.isoformat(timespec="seconds"),
                           f"{timezone.localtime(obj.created_at):%Y-%m-%d %H:%M}")

    def get_changelist_form(self, request, **kwargs):
        return FeedbackListForm

    # Reviewers score blind (review.sees_versions): the version that wrote a response is shown to leads only.
    def get_list_display(self, request):
        return self.list_display if review.sees_versions(request.user) else [
            f for f in self.list_display if f != "version"]

    def get_list_filter(self, request):
        return self.list_filter if review.sees_versions(request.user) else [
            f for f in self.list_filter if not (isinstance(f, tuple) and f[0] == "policy_version")]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return self.readonly_fields
        # What the agent sent stays as sent; reviewers change score and notes.
        return [*self.readonly_fields, "agent", "prompt_text", "response_text", "run_id", "policy_version"]

    def get_fieldsets(self, request, obj=None):
        fieldsets = self.fieldsets
        if not review.sees_versions(request.user):
            fieldsets = [(name, {**options, "fields": [f for f in options["fields"] if f != "policy_version"]})
                         for name, options in fieldsets]
        if obj is None:
            return fieldsets
        # A stored record's texts are shown by prompt_text/response_text: bounded, as on every reviewer page.
        first = (None, {"fields": ["agent", "prompt_text", "response_text"]})
        return [first, *fieldsets[1:]]

    def _text(self, obj: Feedback, field: str):
        """A stored text as the readonly field shows it (line breaks kept); beyond rendering.LIST_CHARS characters,
        its start and a link to all of it as plain text (a 9 MB record made this page take seconds)."""
        text = getattr(obj, field)
        if len(text) <= rendering.LIST_CHARS:
            return text
        url = reverse("admin:feedback_feedback_text", args=[obj.pk, field])
        return format_html(
            '<p class="n3-render-note">The first {} of {} characters. <a href="{}">Show all</a> (plain text).</p>{}',
            f"{rendering.LIST_CHARS:,}", f"{len(text):,}", url, linebreaksbr(text[:rendering.LIST_CHARS], True),
        )

    @admin.display(description="prompt")
    def prompt_text(self, obj: Feedback):
        return self._text(obj, "prompt")

    @admin.display(description="response")
    def response_text(self, obj: Feedback):
        return self._text(obj, "response")

    def text_view(self, request: HttpRequest, pk: int, field: str):
        """The whole prompt or response of a record as plain text: the "Show all" of the pages that show its start."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        if field not in ("prompt", "response"):
            raise Http404(f"No field {field!r}: prompt or response")
        feedback = get_object_or_404(Feedback.objects.only(field), pk=pk)
        return HttpResponse(getattr(feedback, field), content_type="text/plain; charset=utf-8")

    def save_model(self, request, obj, form, change):
        """A score typed here (form or list) is a lead's decision, as the "Set score" action: see
        services.decide_score; clearing it puts the item back in the queue without its reviews."""
        if not change:
            obj.source = Feedback.Source.ADMIN
        super().save_model(request, obj, form, change)
        if "score" in form.changed_data or (not change and obj.score is not None):
            services.decide_score(feedback_id=obj.pk, score=obj.score, user=request.user)
            obj.refresh_from_db()

    # -- actions ---------------------------------------------------------------------------
    @admin.action(description="Set score of selected feedback (enter the score beside the action)",
                  permissions=["change"])
    def set_score(self, request, queryset):
        """A lead's decision: the score is set whatever the reviews say, and becomes the acting user's review."""
        text = request.POST.get("score", "").strip()
        try:
            if not text:
                raise ServiceError("Enter a score between 0 and 1 in the box beside the action.")
            score = review.validate_score(text)
        except ServiceError as exc:
            self.message_user(request, f"No score set: {exc}", messages.ERROR)
            return None
        count = review.set_scores(queryset=queryset, score=score, user=request.user)
        self.message_user(request, f"Set score {score:g} on {count} feedback.", messages.SUCCESS)
        return None

    @admin.action(description="Clear score and reviews of selected feedback (back to the review queue)",
                  permissions=["change"])
    def clear_score(self, request, queryset):
        count = review.clear_scores(queryset=queryset)
        self.message_user(request, f"Cleared the score and reviews of {count} feedback; they are back in the review "
                                   "queue.")

    @admin.action(description="Export selected feedback as JSONL", permissions=["view"])
    def export_jsonl(self, request, queryset):
        return self._export(queryset, "jsonl", "selected")

    @admin.action(description="Export selected feedback as CSV", permissions=["view"])
    def export_csv(self, request, queryset):
        return self._export(queryset, "csv", "selected")

    # -- import / export views -------------------------------------------------------------
    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("import/", wrap(self.import_view), name="feedback_feedback_import"),
            path("export/", wrap(self.export_view), name="feedback_feedback_export"),
            path("<int:pk>/text/<str:field>/", wrap(self.text_view), name="feedback_feedback_text"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "review_url": reverse("review:queue"),
            "unscored_count": Feedback.objects.filter(score__isnull=True).count(),
            "export_query": urlencode([(k, v) for k, v in request.GET.items() if k not in {"p", "e"}]),
        }
        return super().changelist_view(request, extra_context)

    def import_view(self, request: HttpRequest):
        if not self.has_add_permission(request):
            raise PermissionDenied
        errors: list = []
        error_total = 0
        if request.method == "POST":
            form = ImportForm(request.POST, request.FILES)
            if form.is_valid():
                upload = form.cleaned_data["file"]
                try:
                    result = importexport.import_feedback(
                        agent_name=form.cleaned_data["agent"].strip(),
                        stream=upload,
                        fmt=form.cleaned_data["format"] or importexport.format_for(upload.name),
                        user=request.user,
                    )
                except importexport.ImportFailed as exc:
                    errors, error_total = exc.errors[:100], len(exc.errors)
                except ServiceError as exc:
                    form.add_error(None, str(exc))
                else:
                    self.message_user(request, result.summary(), messages.SUCCESS)
                    agent = Agent.objects.get(name=result.agent_name)
                    return redirect(f"{reverse('admin:feedback_feedback_changelist')}?agent__id__exact={agent.pk}")
        else:
            form = ImportForm(initial={"agent": request.GET.get("agent", "")})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Import feedback",
            "form": form,
            "errors": errors,
            "error_total": error_total,
            "agent_names": Agent.objects.values_list("name", flat=True),
            "fields": importexport.FIELDS,
        }
        return TemplateResponse(request, "admin/feedback/feedback/import.html", context)

    def export_view(self, request: HttpRequest):
        """Download what the changelist shows (its filters and search apply), as JSONL or CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        request.GET = request.GET.copy()
        fmt = request.GET.pop("format", ["jsonl"])[-1]
        if fmt not in importexport.FORMATS:
            self.message_user(request, f"Unknown export format {fmt!r}.", messages.ERROR)
            return redirect("admin:feedback_feedback_changelist")
        queryset = self.get_changelist_instance(request).get_queryset(request)
        agent_names = set(queryset.values_list("agent__name", flat=True).distinct()[:2])
        label = agent_names.pop() if len(agent_names) == 1 else "all"
        return self._export(queryset, fmt, label)

    def _export(self, queryset, fmt: str, label: str) -> StreamingHttpResponse:
        filename = f"feedback-{label}-{timezone.now():%Y%m%d-%H%M}.{fmt}"
        response = StreamingHttpResponse(
            importexport.export_lines(queryset=queryset, fmt=fmt), content_type=importexport.CONTENT_TYPES[fmt]
        )
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
