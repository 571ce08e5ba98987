"""n3site.middleware.LazyMessageMiddleware: messages work as with Django's middleware; an API request makes none."""
from django.contrib.auth.models import Group
from django.utils.functional import empty


def test_a_message_added_in_the_admin_is_shown_on_the_next_page(admin_client):
    response = admin_client.post("/admin/auth/group/add/", {"name": "reviewers"}, follow=True)

    assert Group.objects.filter(name="reviewers").exists()
    assert response.redirect_chain[-1][0] == "/admin/auth/group/"
    shown = [str(message) for message in response.context["messages"]]
    assert len(shown) == 1 and "was added successfully" in shown[0]
    # Read once: the page after shows it no more.
    assert not list(admin_client.get("/admin/auth/group/").context["messages"])


def test_an_api_request_sets_no_cookie(make_user, client_for):
    client = client_for(make_user("bot", "feedback.add_feedback"))
    response = client.post(
        "/api/policies/feedback/bot", {"prompt": "q", "response": "a", "score": 0.5}, format="json"
    )

    assert response.status_code == 201
    assert not response.cookies
    assert response.wsgi_request._messages._wrapped is empty  # no message storage was made
    assert not response.has_header("Vary") or "Cookie" not in response["Vary"]
