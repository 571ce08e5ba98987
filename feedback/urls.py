"""The reviewer pages, mounted at /review/ (see n3site/urls.py)."""
from django.urls import path

from . import views

app_name = "review"

urlpatterns = [
    path("", views.queue_page, name="queue"),
    path("next", views.next_item, name="next"),
    path("items/<int:pk>/score", views.score_item, name="score"),
    path("items/<int:pk>/skip", views.skip_item, name="skip"),
]
