"""Prompts and responses as reviewers see them (feedback/rendering.py, the ``render_message`` filter): Markdown with
code rendered, chats as conversations, plain text as written, and nothing in the text able to run script or load a
URL in the reviewer's browser."""
import json
import re
from html.parser import HTMLParser

import pytest
from django.template import Context, Template

from feedback.rendering import render_message


class Elements(HTMLParser):
    """The tags and attributes of rendered HTML, as a browser would parse them."""

    def __init__(self, html: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_inert(html: str) -> None:
    """No script, no event handler, no element that loads a URL, no link that is not http(s) or mailto."""
    for tag, attrs in Elements(html).tags:
        assert tag not in {"script", "img", "iframe", "object", "embed", "style", "svg", "form", "input", "link"}, html
        assert not any(name.startswith("on") or name in {"src", "style", "srcdoc"} for name in attrs), html
        if tag == "a":
            assert re.match(r"(https?|mailto):", attrs["href"]), html


XSS = [
    "<script>alert(1)</script>",
    'Hi <img src=x onerror="alert(1)"> there',
    "<a href=\"javascript:alert(1)\">click</a>",
    "[click](javascript:alert(1))",
    "[click](JaVaScRiPt:alert(1))",
    "[click]( javascript:alert(1) )",
    "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "<javascript:alert(1)>",
    "![x](https://tracker.example/pixel.png)",
    "![x](javascript:alert(1))",
    "# Title\n\n<div onmouseover=\"alert(1)\">raw html in markdown</div>\n\n* item <b onclick=x>b</b>",
    "```html\n<script>alert(1)</script>\n```",
    '```python" onmouseover="alert(1)\nprint(1)\n```',
    "<svg onload=alert(1)>",
    "<style>body{display:none}</style>",
    '[{"role": "user", "content": "<img src=x onerror=alert(1)>"}]',
    '[{"role": "<script>alert(1)</script>", "content": "[x](javascript:alert(1))"}]',
    '[{"role": "user\\" onclick=\\"alert(1)", "content": "hi"}]',
]


@pytest.mark.parametrize("text", XSS)
def test_nothing_in_the_text_runs_or_loads(text):
    html = render_message(text)
    assert_inert(html)


def test_raw_html_is_shown_as_text():
    html = render_message('Hi <img src=x onerror="alert(1)"> there')
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html
    html = render_message("# Title\n\n<script>alert(1)</script>")
    assert "<h1>Title</h1>" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_javascript_links_are_not_links_but_web_links_are():
    html = render_message("see [bad](javascript:alert(1)) and [good](https://example.org/a?b=1)")
    assert "[bad](javascript:alert(1))" in html  # left as the text it was
    assert '<a href="https://example.org/a?b=1" rel="nofollow noopener noreferrer" target="_blank">good</a>' in html
    assert 'href="javascript' not in html.lower()
    # A relative link would point into the admin itself: text too.
    assert "<a " not in render_message("[delete](/admin/auth/user/1/delete/)")


def test_images_are_not_loaded():
    html = render_message("![chart](https://example.org/chart.png)")
    assert "<img" not in html and 'href="https://example.org/chart.png"' in html


def test_markdown_code_fences_lists_tables():
    text = ("## Steps\n\n1. install\n2. run `n3 --help`\n\n```python\nif a < b:\n    print('x')\n```\n\n"
            "| a | b |\n|---|---|\n| 1 | 2 |")
    html = render_message(text)
    assert '<div class="n3-markdown">' in html
    assert "<h2>Steps</h2>" in html
    assert "<ol>" in html and "<code>n3 --help</code>" in html
    assert "<pre><code class=\"language-python\">if a &lt; b:\n    print('x')\n</code></pre>" in html
    assert "<table>" in html and "<td>2</td>" in html


def test_fence_language_cannot_break_out_of_its_attribute():
    html = render_message('```python" onmouseover="alert(1)\nprint(1)\n```')
    assert Elements(html).tags[1] == ("pre", {})
    assert set(Elements(html).tags[2][1]) == {"class"}


def test_plain_text_stays_as_written():
    text = "Line one\n    indented line?  no: two spaces inside\n\n\nthree blank lines above, a < b & c"
    # Four leading spaces after a paragraph line are not a code block (CommonMark), so this is plain text.
    html = render_message(text)
    assert html == (
        '<div class="n3-plain">Line one\n    indented line?  no: two spaces inside\n\n\n'
        "three blank lines above, a &lt; b &amp; c</div>"
    )


def test_html_entities_in_plain_text_are_shown_as_typed():
    assert render_message("AT&amp;T") == '<div class="n3-plain">AT&amp;amp;T</div>'


def test_chat_json_is_a_conversation():
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is **2+2**?"},
        {"role": "assistant", "content": [{"type": "text", "text": "4"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "add"}}]},
    ]
    html = render_message(json.dumps(chat))
    assert html.startswith('<div class="n3-chat">')
    roles = re.findall(r'<div class="n3-chat-message n3-role-(\w+)"><div class="n3-chat-role">(\w+)</div>', html)
    assert roles == [("system", "system"), ("user", "user"), ("assistant", "assistant"), ("assistant", "assistant")]
    assert "<strong>2+2</strong>" in html  # each message's content is Markdown-rendered
    assert "4\n\n[image_url]" in html
    assert "tool_calls" in html and "&quot;add&quot;" in html  # a message without text content shows its fields


def test_openai_request_shape_is_a_conversation_too():
    html = render_message(json.dumps({"model": "agent", "messages": [{"role": "user", "content": "hi"}]}))
    roles = re.findall(r'<div class="n3-chat-message n3-role-(\w+)"><div class="n3-chat-role">(\w+)</div>', html)
    assert html.startswith('<div class="n3-chat">') and roles == [("user", "user")]
    assert html.endswith(">hi</div></div></div>") and "agent" not in html  # the conversation, not the request fields


def test_an_unknown_role_is_shown_in_the_neutral_style():
    html = render_message(json.dumps([{"role": "narrator", "content": "Once"}]))
    assert '<div class="n3-chat-message n3-role-other"><div class="n3-chat-role">narrator</div>' in html


@pytest.mark.parametrize("text", [
    '[{"role": "user", "content": "unclosed"}',  # invalid JSON
    '[{"role": "user"}]',  # no content
    '[{"content": "no role"}]',
    "[]",
    '{"answer": 42}',
    "[1, 2, 3]",
])
def test_json_that_is_not_a_chat_stays_text(text):
    assert render_message(text) == f'<div class="n3-plain">{text.replace(chr(34), "&quot;")}</div>'


def test_the_template_filter():
    template = Template("{% load review_tags %}<div class=\"n3-text\">{{ text|render_message }}</div>")
    html = template.render(Context({"text": "**bold** <b>not bold</b>"}))
    assert html == (
        '<div class="n3-text"><div class="n3-markdown"><p><strong>bold</strong> &lt;b&gt;not bold&lt;/b&gt;</p>\n'
        "</div></div>"
    )
    assert Template("{% load review_tags %}{{ text|render_message }}").render(Context({"text": None})) == ""


@pytest.mark.django_db
def test_the_review_queue_sends_the_rendered_text(client, django_user_model):
    """The queue's script shows ``promptHtml``/``responseHtml`` (static/n3/review.js), rendered by the same function."""
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    from feedback.models import Feedback
    from policies.models import Agent

    user = django_user_model.objects.create_user("rita", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_feedback"))
    client.force_login(user)
    chat = json.dumps([{"role": "user", "content": "Reverse a list?"}])
    Feedback.objects.create(agent=Agent.objects.create(name="bot"), prompt=chat,
                            response="Use `reversed()` <script>alert(1)</script>")
    item = client.post(reverse("review:next"), "{}", content_type="application/json").json()["item"]
    assert item["prompt"] == chat  # the raw text stays there too
    assert item["promptHtml"] == render_message(chat) and "n3-role-user" in item["promptHtml"]
    assert item["responseHtml"] == (
        '<div class="n3-markdown"><p>Use <code>reversed()</code> &lt;script&gt;alert(1)&lt;/script&gt;</p>\n</div>')


# Issue 20 item 3: a 2.25 MB Markdown response made /review/next take 30 s. Markdown is parsed only up to
# MARKDOWN_LIMIT characters; beyond it the text is plain (escaped) under a note, and list pages show an excerpt.
# 9 MB of the slowest Markdown we know of (tables, nested brackets), a chat and plain prose.
BIG = {
    "markdown": "| a | b |\n|---|---|\n" + "| **x** [y](https://e.org) | `z` <b> |\n" * 230_000,
    "brackets": "[" * 9_000_000,
    "chat": json.dumps([{"role": "user", "content": "# Hi\n\n* item\n" * 600_000}]),
}
# Generous for a loaded 2-core machine, meaningful against 30 s: one such page took 30 s before the bound.
PAGE_SECONDS = 1.0


def _timed(fn, runs: int = 3):
    """fn's result and its best time of ``runs``: another process's burst on a loaded machine (the suite runs two
    workers) must not fail a bound meant for the rendering's own cost."""
    import time
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


@pytest.mark.parametrize("kind", sorted(BIG))
def test_a_multi_megabyte_text_renders_fast_as_plain_text_with_a_note(kind):
    from feedback.rendering import MARKDOWN_LIMIT
    text = BIG[kind]
    html, seconds = _timed(lambda: render_message(text))
    assert seconds < PAGE_SECONDS / 3, seconds  # the compare page shows three
    assert f"{len(text):,} characters: shown as plain text" in html
    assert f"rendered up to {MARKDOWN_LIMIT:,}" in html
    assert "<table>" not in html and "n3-chat" not in html and "<b>" not in html
    assert html.count("&lt;b&gt;") == text.count("<b>")  # all of it, escaped
    assert_inert(html)
    # Just under the bound, the same text is still Markdown.
    assert "<table>" in render_message(BIG["markdown"][:MARKDOWN_LIMIT])


def test_json_nested_deeper_than_python_recurses_is_text_not_an_error():
    assert render_message("[" * 5_000) == '<div class="n3-plain">' + "[" * 5_000 + "</div>"


@pytest.mark.django_db
def test_reviewer_pages_with_a_nine_megabyte_record_answer_within_a_second():
    from django.urls import reverse

    from feedback.models import Feedback, Review
    from policies.models import Agent
    from tests.users import login, staff

    lead = staff("lead", "feedback.change_feedback")
    other = staff("other", "feedback.change_feedback")
    client = login(lead)
    agent = Agent.objects.create(name="big")
    for kind in sorted(BIG):
        item = Feedback.objects.create(agent=agent, prompt=BIG[kind], response=BIG[kind])
        Review.objects.create(feedback=item, reviewer=other, score=0.0)
        Review.objects.create(feedback=item, reviewer=staff(f"r-{kind}", "feedback.change_feedback"), score=1.0)

    client.get(reverse("review:progress"))  # the first request loads the middleware and URLs: not timed
    response, seconds = _timed(lambda: client.post(reverse("review:next"), "{}", content_type="application/json"))
    assert response.status_code == 200 and seconds < PAGE_SECONDS, seconds
    item = response.json()["item"]
    assert item["response"] in BIG.values()  # the raw text, whole
    # Shown: its start, as plain text, and a link to all of it (the page does not carry 9 MB twice).
    whole = reverse("admin:feedback_feedback_text", args=[item["id"], "response"])
    assert item["responseHtml"].startswith(
        f'<p class="n3-quiet n3-render-note">The first 20,000 characters of {len(item["response"]):,} characters, as '
        f'plain text. <a href="{whole}">Show all</a>.</p>')

    response, seconds = _timed(lambda: client.get(reverse("review:disagreements") + "?spread=0.5"))
    assert response.status_code == 200 and seconds < PAGE_SECONDS, seconds
    page = response.content.decode()
    assert page.count("n3-disagreement\"") == 3
    # Each text shows its start and links to all of it, as plain text.
    assert page.count("The first 20,000 characters of ") == 6
    assert page.count("Show all") == 6
    item = Feedback.objects.get(prompt=BIG["brackets"])
    whole = reverse("admin:feedback_feedback_text", args=[item.pk, "prompt"])
    assert f'href="{whole}"' in page
    response, seconds = _timed(lambda: client.get(whole))
    assert response.status_code == 200 and seconds < PAGE_SECONDS, seconds
    assert response["Content-Type"] == "text/plain; charset=utf-8" and response.content.decode() == BIG["brackets"]
    # The record's admin page (the queue links to it) shows the start of each text and the same link.
    reader = login(staff("reader", "feedback.view_feedback"))
    reader.get(reverse("review:progress"))
    response, seconds = _timed(lambda: reader.get(reverse("admin:feedback_feedback_change", args=[item.pk])))
    assert response.status_code == 200 and seconds < PAGE_SECONDS, seconds
    assert response.content.decode().count("Show all") == 2 and f'href="{whole}"' in response.content.decode()
    assert reader.get(reverse("admin:feedback_feedback_text", args=[item.pk, "notes"])).status_code == 404
    assert login(staff("nobody")).get(whole).status_code == 403
