"""Prompts and responses shown as reviewers expect: Markdown, chat conversations, plain text.

``render_message(text)`` returns HTML that is safe to insert into a page, whatever the text holds:

- a JSON list of chat messages (``[{"role": "user", "content": "..."}, ...]``, or an OpenAI-style request
  ``{"messages": [...]}``) is shown as a conversation, one block per message under its role;
- text that uses Markdown (headings, lists, code, tables, emphasis, links, quotes) is rendered as Markdown;
- anything else is plain text and stays exactly as written (whitespace kept by the ``n3-plain`` class's CSS).

Safety does not rest on a sanitiser run afterwards: markdown-it-py renders with ``html`` off, so raw HTML in the
text (``<script>``, ``<img onerror>``) is escaped like any other text, and only ``http``, ``https`` and ``mailto``
URLs become links (``javascript:``, ``data:`` and relative URLs stay text). Images are not loaded (a response
must not make the reviewer's browser fetch a URL): ``![alt](url)`` becomes a link.

Size bound: Markdown costs up to ~30 µs a character to render (2.25 MB took 30 s), so a text longer than
``MARKDOWN_LIMIT`` characters is not parsed at all: it is shown as plain escaped text (which costs ~15 ns a
character) under a note that says why. List pages, where one page shows many texts, show only the start of each
text, with a link to the whole record (``render_list``). Every reviewer page thus stays well under a second whatever
a stored record holds (tests/feedback/test_rendering.py times 9 MB ones).
"""
from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

SAFE_SCHEMES = frozenset({"http", "https", "mailto"})
# Inline tokens that plain text produces too: text that has only these is shown as written, not as Markdown.
_PLAIN_INLINE = frozenset({"text", "softbreak", "hardbreak", "text_special"})
_PLAIN_BLOCK = frozenset({"paragraph_open", "paragraph_close", "inline"})
# Roles that get their own colour; any other role is still shown (escaped), in the neutral style.
KNOWN_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# Longest text (in characters) rendered as Markdown or as a chat; a longer one is plain text. 10,000 characters
# (about 2,500 tokens: most model answers) render in 0.01-0.4 s on a loaded 2-core machine, the worst being
# pathological input such as 10,000 "[".
MARKDOWN_LIMIT = 10_000


def _validate_link(url: str) -> bool:
    return urlsplit(url.strip()).scheme.lower() in SAFE_SCHEMES


def _markdown() -> MarkdownIt:
    # CommonMark with GitHub's tables and strikethrough; html off (raw HTML is text); a line break is a line break
    # (reviewers read model output, where a newline is meant as one).
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
    md.disable("image")
    md.validateLink = _validate_link

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        tokens[idx].attrSet("target", "_blank")
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()


def _is_plain(tokens) -> bool:
    """True when the parse found nothing but paragraphs of text: the text uses no Markdown."""
    for token in tokens:
        if token.type not in _PLAIN_BLOCK:
            return False
        if token.type == "inline" and any(child.type not in _PLAIN_INLINE for child in token.children or ()):
            return False
    return True


def render_text(text: str) -> SafeString:
    """Markdown as HTML when the text uses Markdown, else the text itself (escaped, whitespace kept by CSS)."""
    tokens = _MD.parse(text)
    if _is_plain(tokens):
        return format_html('<div class="n3-plain">{}</div>', text)
    # Safe: markdown-it escapes all text and attributes, html is off and links are checked by _validate_link.
    return mark_safe(f'<div class="n3-markdown">{_MD.renderer.render(tokens, _MD.options, {})}</div>')


def chat_messages(text: str) -> list[dict] | None:
    """The messages when ``text`` is a JSON chat (a list of {"role", "content"}, or {"messages": [...]}), else
    None."""
    stripped = text.strip()
    if not stripped or stripped[0] not in "[{":
        return None
    try:
        data = json.loads(stripped)
    except (ValueError, RecursionError):  # RecursionError: text such as "[[[[..." nested deeper than Python recurses
        return None
    if isinstance(data, dict):
        data = data.get("messages")
    if not isinstance(data, list) or not data:
        return None
    if all(isinstance(m, dict) and isinstance(m.get("role"), str) and "content" in m for m in data):
        return data
    return None


def _content_text(content: Any) -> str | None:
    """A message's content as text: a string, or the text parts of a list of parts (OpenAI's multi-part content,
    other parts named in brackets). None for anything else (e.g. null content with tool calls)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, dict):
                parts.append(f"[{part.get('type', 'part')}]")
            else:
                parts.append(str(part))
        return "\n\n".join(parts)
    return None


def _render_chat(messages: list[dict]) -> SafeString:
    blocks = []
    for message in messages:
        role = message["role"]
        text = _content_text(message.get("content"))
        if text is None:
            # Not text (tool calls, null content): show the message's other fields as they are.
            rest = {k: v for k, v in message.items() if k != "role"}
            body = format_html('<div class="n3-plain">{}</div>', json.dumps(rest, indent=2, ensure_ascii=False))
        else:
            body = render_text(text)
        css = role.lower() if role.lower() in KNOWN_ROLES else "other"
        blocks.append(format_html(
            '<div class="n3-chat-message n3-role-{}"><div class="n3-chat-role">{}</div>{}</div>', css, role, body,
        ))
    # Each block was built by format_html (escaped), so their concatenation is safe.
    return format_html('<div class="n3-chat">{}</div>', mark_safe("".join(blocks)))


def _chars(count: int) -> str:
    return f"{count:,} character{'' if count == 1 else 's'}"


def render_message(text: Any, *, markdown_limit: int = MARKDOWN_LIMIT) -> SafeString:
    """A prompt or response as HTML safe to insert into a page: a chat conversation, Markdown or plain text; a
    text longer than ``markdown_limit`` characters is plain text under a note (see the module's docstring)."""
    if text is None:
        return mark_safe("")
    text = str(text)
    if len(text) > markdown_limit:
        return format_html(
            '<p class="n3-quiet n3-render-note">{}: shown as plain text (Markdown and chats are rendered up to {}).'
            '</p><div class="n3-plain">{}</div>',
            _chars(len(text)), _chars(markdown_limit), text,
        )
    messages = chat_messages(text)
    if messages is not None:
        return _render_chat(messages)
    return render_text(text)



# A list page (many texts) renders at most this many characters of Markdown in all, and shows at most LIST_CHARS
# of each text; the rest is one click away.
PAGE_MARKDOWN_CHARS = 3 * MARKDOWN_LIMIT
LIST_CHARS = 20_000


def render_excerpt(text: str, *, length: int, url: str = "") -> SafeString:
    """The first LIST_CHARS characters of a text ``length`` characters long, as plain text, under a note that
    links to all of it (``url``)."""
    more = format_html(' <a href="{}">Show all</a>.', url) if url else ""
    return format_html(
        '<p class="n3-quiet n3-render-note">The first {} of {}, as plain text.{}</p><div class="n3-plain">{}</div>',
        _chars(LIST_CHARS), _chars(length), more, text[:LIST_CHARS],
    )


def render_bounded(text: str, *, url: str = "") -> SafeString:
    """``render_message`` for a text up to LIST_CHARS characters, else its excerpt (the review queue: one item,
    whose text a page need not carry whole twice, raw and as HTML)."""
    if text is not None and len(text) > LIST_CHARS:
        return render_excerpt(text, length=len(text), url=url)
    return render_message(text)


def render_list(texts: list[tuple[str, int, str]]) -> list[SafeString]:
    """HTML for each (text or its first LIST_CHARS + 1 characters, the text's length, url of the whole record) of
    a list page, within the page's budget: Markdown for the first texts up to PAGE_MARKDOWN_CHARS in all, plain
    text after that; of a longer text, its first LIST_CHARS characters and a link to all of it."""
    budget = PAGE_MARKDOWN_CHARS
    out = []
    for text, length, url in texts:
        text = text or ""
        if length > LIST_CHARS:
            out.append(render_excerpt(text, length=length, url=url))
            continue
        limit = MARKDOWN_LIMIT if length <= budget else 0
        if length <= limit:
            budget -= length
        out.append(render_message(text, markdown_limit=limit))
    return out
