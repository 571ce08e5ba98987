"""{% review_summary %}: how much awaits review, for the admin index."""
from django import template
from django.db.models import Count, Q

from policies.models import Agent

register = template.Library()


@register.simple_tag
def review_summary(limit: int = 10) -> dict:
    agents = (
        Agent.objects.annotate(unscored=Count("feedback", filter=Q(feedback__score__isnull=True)))
        .filter(unscored__gt=0)
        .order_by("-unscored")
    )
    return {"total": sum(a.unscored for a in agents), "agents": agents[:limit]}
