"""The site's own few pages: where ``/`` leads, and the favicon."""
from __future__ import annotations

from django.contrib.staticfiles.storage import staticfiles_storage
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode


def home(request: HttpRequest) -> HttpResponseRedirect:
    """``/`` and the admin's "View site": each user to their work, rather than a page of links to it. Reviewers
    (may score feedback, see no agents) to the review queue; other staff to the admin index, which links the
    queue, the agents and the API docs; a signed-in user who is not staff (an API user) to the API docs; anyone
    else to the login, which brings them back here."""
    user = request.user
    if not user.is_authenticated:
        return HttpResponseRedirect(f"{reverse('admin:login')}?{urlencode({'next': '/'})}")
    if not user.is_staff:
        return HttpResponseRedirect(reverse("swagger-ui"))
    if user.has_perm("feedback.change_feedback") and not user.has_perm("policies.view_agent"):
        return HttpResponseRedirect(reverse("review:queue"))
    return HttpResponseRedirect(reverse("admin:index"))


def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """/favicon.ico, which browsers ask for on pages without an icon link (the API docs): the admin's icon."""
    return HttpResponseRedirect(staticfiles_storage.url("n3/favicon.svg"))
