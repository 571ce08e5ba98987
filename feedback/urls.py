"""The reviewer pages, mounted at /review/ (see n3site/urls.py)."""
from django.urls import path

from . import comparison_views, lead_views, views

app_name = "review"

urlpatterns = [
    path("", views.queue_page, name="queue"),
    path("next", views.next_item, name="next"),
    path("items/<int:pk>/score", views.score_item, name="score"),
    path("items/<int:pk>/skip", views.skip_item, name="skip"),
    # Going back: the reviewer's previous review, undo of a save, editing a review (the queue and "my reviews").
    path("reviews/previous", views.previous_item, name="previous"),
    path("reviews/<int:pk>/edit", views.edit_item, name="edit"),
    path("reviews/<int:pk>/undo", views.undo_item, name="undo"),
    path("mine", views.my_reviews, name="mine"),
    # Blind side-by-side comparison of two versions (feedback/comparison_views.py).
    path("compare/<int:pk>/", comparison_views.compare_queue, name="compare"),
    path("compare/<int:pk>/items/<int:item_pk>/vote", comparison_views.vote_item, name="compare_vote"),
    path("compare/<int:pk>/items/<int:item_pk>/skip", comparison_views.skip_item, name="compare_skip"),
    path("compare/<int:pk>/previous", comparison_views.previous_item, name="compare_previous"),
    path("compare/<int:pk>/items/<int:item_pk>/change", comparison_views.change_item, name="compare_change"),
    path("compare/<int:pk>/items/<int:item_pk>/undo", comparison_views.undo_item, name="compare_undo"),
    # The lead reviewer's pages (feedback/lead_views.py): disagreements to settle, every reviewer's progress.
    path("disagreements/", lead_views.disagreements_page, name="disagreements"),
    path("disagreements/<int:pk>/settle", lead_views.settle_item, name="settle"),
    path("progress/", lead_views.progress_page, name="progress"),
]
