"""``{{ text|render_message }}``: a prompt or response shown as reviewers expect (feedback/rendering.py): a JSON
chat as a conversation, Markdown rendered safely (no raw HTML, no javascript: links), plain text as written.

Load with ``{% load review_tags %}``; put the result inside an element with class ``n3-text`` (static/n3/n3.css)."""
from django import template

from feedback.rendering import render_message as _render_message

register = template.Library()


@register.filter(is_safe=True)
def render_message(text):
    return _render_message(text)
