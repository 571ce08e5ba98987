"""Agents and policy versions in the admin: feedback health, training, live progress and curves."""
from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils.html import format_html

from feedback.selectors import agent_agreement
from n3_server.rlhf import RLHFError
from n3site.exceptions import ServiceError
from policies.models import Agent, PolicyVersion

from ..files import agent_dir, version_dir
from ..services import queue_training_request
from . import views


def _files_going(deleted_objects: list, directories: list[str], running: int) -> list:
    """The delete confirmation's list (single delete and the bulk action) says which directories go too."""
    notes = [f"Files: {directory} (deleted from disk with it)" for directory in directories]
    if running:
        notes.append(f"{running} running training(s): stopped, their files deleted")
    return [*deleted_objects, *notes]


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "feedback_total", "unscored", "latest_version", "latest_reward", "deployed", "created_at"]
    list_select_related = ["active_version"]
    search_fields = ["name", "description"]
    # The deployment is changed through the page's deployment panel (training.deployment's checks), not the form.
    readonly_fields = ["active_version", "traffic", "record_served", "created_at"]
    actions = ["train_now"]
    change_form_template = "admin/policies/agent/change_form.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            n_feedback=Count("feedback", distinct=True),
            n_unscored=Count("feedback", filter=Q(feedback__score__isnull=True), distinct=True),
        )

    @admin.display(description="feedback", ordering="n_feedback")
    def feedback_total(self, agent: Agent) -> int:
        return agent.n_feedback

    @admin.display(description="awaiting review", ordering="n_unscored")
    def unscored(self, agent: Agent):
        if not agent.n_unscored:
            return 0
        return format_html(
            '<a href="{}?agent={}">{} — review</a>', reverse("review:queue"), agent.name, agent.n_unscored,
        )

    @admin.display(description="latest version")
    def latest_version(self, agent: Agent):
        version = agent.versions.order_by("-number").first()
        if version is None:
            return "—"
        url = reverse("admin:policies_policyversion_change", args=[version.pk])
        return format_html('<a href="{}">{}</a> ({})', url, version.version, version.get_status_display())

    @admin.display(description="reward mean")
    def latest_reward(self, agent: Agent):
        version = agent.versions.filter(status=PolicyVersion.Status.TRAINED).order_by("-number").first()
        reward = version.reward_mean if version else None
        return f"{reward:.3f}" if isinstance(reward, (int, float)) else "—"

    @admin.display(description="deployed")
    def deployed(self, agent: Agent) -> str:
        """The active version, and the traffic split when there is one."""
        split = ", ".join(f"{name} {share:.0%}" for name, share in (agent.traffic or {}).items())
        active = agent.active_version.version if agent.active_version else "—"
        return f"{active} (split: {split})" if split else active

    @admin.action(description="Train now (agent's default config)", permissions=["train"])
    def train_now(self, request, queryset):
        for agent in queryset:
            try:
                version = queue_training_request(agent_name=agent.name, overrides={}, user=request.user)
            except (RLHFError, ServiceError) as exc:
                self.message_user(request, f"Agent {agent.name}: not started: {exc}", messages.ERROR)
            else:
                url = reverse("admin:policies_policyversion_change", args=[version.pk])
                self.message_user(
                    request, format_html('Agent {}: <a href="{}">{}</a> queued.', agent.name, url, version.version),
                    messages.SUCCESS,
                )

    def has_train_permission(self, request) -> bool:
        return request.user.has_perm("policies.add_policyversion")

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<int:pk>/train/", wrap(views.train_agent), {"model_admin": self}, name="policies_agent_train"),
            path("<int:pk>/deploy/", wrap(views.deploy_agent), {"model_admin": self},
                 name="policies_agent_deploy"),
            *super().get_urls(),
        ]

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        running = PolicyVersion.objects.filter(agent__in=list(objs), status=PolicyVersion.Status.RUNNING).count()
        directories = [f"{agent_dir(agent.name)}/" for agent in objs]
        return _files_going(deleted, directories, running), model_count, perms_needed, protected

    def change_view(self, request, object_id, form_url="", extra_context=None):
        agent = self.get_object(request, object_id)
        extra = {"n3": views.agent_panels(agent)} if agent else {}
        extra["can_train"] = self.has_train_permission(request)
        extra["can_deploy"] = request.user.has_perm("policies.change_policyversion")
        if agent:
            extra["agreement"] = agent_agreement(agent=agent)
            extra["agreement_urls"] = {
                "disagreements": f"{reverse('review:disagreements')}?agent={agent.name}",
                "progress": reverse("review:progress"),
            }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})


@admin.register(PolicyVersion)
class PolicyVersionAdmin(admin.ModelAdmin):
    list_display = [
        "__str__", "status_badge", "deployed", "progress_text", "reward_mean", "kl", "feedback_count", "queued_at",
        "finished_at",
    ]
    list_filter = ["agent", "status"]
    list_select_related = ["agent"]
    search_fields = ["agent__name", "policy_id"]
    change_form_template = "admin/policies/policyversion/change_form.html"

    class Media:
        css = {"all": ["n3/n3.css"]}  # the change list's status and warning badges

    # Versions are written by training, never by hand: the form is for reading.
    fieldsets = [
        ("Details", {"classes": ["collapse"], "fields": [
            "agent", "number", "policy_id", "status", "step", "max_steps", "feedback_count", "model_path",
            "reward_model_path", "task_id", "cancel_requested", "created_by", "queued_at", "started_at",
            "finished_at", "heartbeat_at", "error",
        ]}),
    ]

    def get_readonly_fields(self, request, obj=None):
        return [f for fieldset in self.fieldsets for f in fieldset[1]["fields"]]

    def has_add_permission(self, request):
        return False  # versions are created by training (the agent page's Train form)

    @admin.display(description="status", ordering="status")
    def status_badge(self, version: PolicyVersion):
        return format_html(
            '<span class="n3-status-badge n3-status-{}">{}</span> {}', version.status, version.get_status_display(),
            render_to_string("n3/_warning_badge.html", {"warnings": version.warnings}),
        )

    @admin.display(description="deployed")
    def deployed(self, version: PolicyVersion) -> str:
        """"active", its traffic share, or both; blank when it answers nothing."""
        share = (version.agent.traffic or {}).get(version.version)
        marks = (["active"] if version.agent.active_version_id == version.pk else []) \
            + ([f"{share:.0%} of traffic"] if share is not None else [])
        return ", ".join(marks) or "—"

    @admin.display(description="step")
    def progress_text(self, version: PolicyVersion) -> str:
        return f"{version.step} / {version.max_steps}" if version.max_steps else "—"

    @admin.display(description="reward mean")
    def reward_mean(self, version: PolicyVersion) -> str:
        value = version.reward_mean
        return f"{value:.3f}" if isinstance(value, (int, float)) else "—"

    @admin.display(description="KL")
    def kl(self, version: PolicyVersion) -> str:
        value = version.kl
        return f"{value:.3f}" if isinstance(value, (int, float)) else "—"

    def get_urls(self):
        wrap = self.admin_site.admin_view

        def viewing(view):
            """Views of one version need the view permission on versions."""
            def check(request, pk, **kwargs):
                if not self.has_view_permission(request):
                    raise PermissionDenied
                return view(request, pk, **kwargs)
            return wrap(check)

        return [
            path("<int:pk>/progress.json", viewing(views.version_progress_json),
                 name="policies_policyversion_progress"),
            path("<int:pk>/charts/", viewing(views.version_charts_fragment),
                 name="policies_policyversion_charts"),
            path("<int:pk>/compare/", viewing(views.compare_versions), {"model_admin": self},
                 name="policies_policyversion_compare"),
            path("<int:pk>/cancel/", wrap(views.cancel_version), {"model_admin": self},
                 name="policies_policyversion_cancel"),
            *super().get_urls(),
        ]

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        versions = list(objs)
        running = sum(v.status == PolicyVersion.Status.RUNNING for v in versions)
        directories = [f"{version_dir(v.agent.name, v.number)}/" for v in versions]
        return _files_going(deleted, directories, running), model_count, perms_needed, protected

    def change_view(self, request, object_id, form_url="", extra_context=None):
        version = self.get_object(request, object_id)
        extra = {
            "show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False,
            "show_delete": self.has_delete_permission(request, version),
        }
        if version is not None:
            extra["n3"] = views.version_context(version)
            extra["can_cancel"] = version.is_active and self.has_change_permission(request, version)
            extra["can_train"] = request.user.has_perm("policies.add_policyversion")
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})
