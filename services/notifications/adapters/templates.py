"""Rendering messages from Jinja2 templates, per message, channel and locale.

Layout of ``services/notifications/templates/``::

    <tag>/<message>.email.j2   blocks: subject, body, action (the label of the main link)
    <tag>/<message>.sms.j2     block:  text
    <tag>/_common.j2           blocks: greeting, signature, footer, marketing_footer, unsubscribe, link_hint
    <tag>/_words.j2            vocabulary, given to every template as ``words.<block>``
    _layout.email.html.j2      the HTML around every email (autoescaped)

A block is looked for along the locale's chain (fr-CA → fr → en), one block at a time: a regional
file holds only the blocks whose wording or legal content differs from the language's base file.
Most regional differences are single terms (the registration document is "de kentekencard" in the
Netherlands and "het inschrijvingsbewijs" in Belgium, taxes are "HT" in France and "avant taxes"
in Quebec): those live in ``_words.j2``, so that a region overrides a word, not a whole message.
Templates are plain text (no autoescape); the HTML part is built by the layout, with autoescape on,
from the same blocks, so both parts always say the same thing. Undefined variables are errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
from jinja2 import StrictUndefined, pass_context, select_autoescape

from services.notifications.domain.locales import format_for, french_spacing, recipient_zone, template_chain
from services.notifications.domain.messages import UnsafeLink, checked_link
from services.notifications.domain.sms import Segments, normalise, segments

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
EMAIL_BLOCKS = ("subject", "body", "action")
COMMON_BLOCKS = ("greeting", "signature", "footer", "marketing_footer", "unsubscribe", "link_hint")

_URL = re.compile(r"https?://[^\s<>\"']+")
_BLANK_LINES = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t\r\n]+")


class TemplateError(Exception):
    """A message cannot be rendered: a template or a block is missing, or a value is."""


class SmsTooLong(TemplateError):
    """The text rendered, but needs more segments than its template may take (a long dealer name
    and address with accents, which turn the whole text to UCS-2): the email may still go."""

    def __init__(self, template: str, locale: str, counted: Segments, limit: int) -> None:
        super().__init__(f"{template}.sms ({locale}) needs {counted.count} {counted.encoding} segments, "
                         f"at most {limit} allowed")
        self.segments = counted
        self.limit = limit


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class RenderedSms:
    text: str
    segments: Segments


@dataclass(frozen=True)
class Paragraph:
    lines: tuple[str, ...]
    bullets: bool


class TemplateRenderer:
    def __init__(self, *, portal_base_url: str, default_time_zone: str, directory: Path = TEMPLATES_DIR) -> None:
        self.portal_base_url = portal_base_url.rstrip("/")
        self.default_time_zone = default_time_zone
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(directory),
            undefined=StrictUndefined,
            autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False, default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            auto_reload=False,
        )
        self.env.filters.update(money=_money, date=_date, long_date=_long_date, short_date=_short_date, time=_time,
                                number=_number)
        self.env.filters["linkify"] = self._linkify
        self.env.filters["link"] = self._link
        self._found: dict[tuple[str, str, str, str], jinja2.Template | None] = {}
        self._words: dict[str, dict[str, str]] = {}
        self._literal: dict[tuple[str, str], str | None] = {}  # blocks that are plain text, rendered once
        self._common_done: dict[tuple[str, str], str] = {}  # plain-text common blocks, tidied and typeset

    # --- finding blocks along the locale chain -------------------------------------------------

    def source_of(self, name: str, block: str, locale: str) -> str | None:
        """The file a block comes from for ``locale`` (``name`` is ``activation.email`` or
        ``_common``), or None when no file along the chain defines it."""
        template = self._find(name, block, locale)
        return template.name if template is not None else None

    def _find(self, name: str, block: str, locale: str) -> jinja2.Template | None:
        key = (name, block, locale, "")
        if key not in self._found:
            self._found[key] = None
            for tag in template_chain(locale):
                try:
                    template = self.env.get_template(f"{tag}/{name}.j2")
                except jinja2.TemplateNotFound:
                    continue
                if block in template.blocks:
                    self._found[key] = template
                    break
        return self._found[key]

    def _block(self, name: str, block: str, locale: str, context: Mapping[str, Any], *, required: bool = True,
               contexts: dict[str, Any] | None = None) -> str:
        template = self._find(name, block, locale)
        if template is None:
            if required:
                raise TemplateError(f"no block {block!r} for {name} along {template_chain(locale)}")
            return ""
        literal = self._literal_text(template, block)
        if literal is not None:  # a signature, a footer: the same for every message of the locale
            return literal
        # Blocks of one file share one rendering context (building one copies every variable).
        contexts = {} if contexts is None else contexts
        if template.name not in contexts:
            contexts[template.name] = template.new_context(dict(context))
        try:
            return "".join(template.blocks[block](contexts[template.name])).strip()
        except jinja2.UndefinedError as error:
            raise TemplateError(f"{template.name} [{block}]: {error.message}") from error

    def _literal_text(self, template: jinja2.Template, block: str) -> str | None:
        """The block's text when it is nothing but text (no variable, filter or tag), else None."""
        key = (template.name or "", block)
        if key not in self._literal:
            self._literal[key] = None
            source = self.env.loader.get_source(self.env, template.name)[0] if self.env.loader else ""
            for node in self.env.parse(source).find_all(jinja2.nodes.Block):
                if node.name == block and all(
                    isinstance(child, jinja2.nodes.Output)
                    and all(isinstance(part, jinja2.nodes.TemplateData) for part in child.nodes)
                    for child in node.body
                ):
                    self._literal[key] = "".join(template.blocks[block](template.new_context({}))).strip()
        return self._literal[key]

    def words(self, locale: str) -> dict[str, str]:
        """The vocabulary of a locale: every ``_words.j2`` block along the chain, the most
        specific winning."""
        if locale not in self._words:
            words: dict[str, str] = {}
            for tag in reversed(template_chain(locale)):
                try:
                    template = self.env.get_template(f"{tag}/_words.j2")
                except jinja2.TemplateNotFound:
                    continue
                for name, block in template.blocks.items():
                    words[name] = "".join(block(template.new_context({}))).strip()
            self._words[locale] = words
        return self._words[locale]

    # --- links ---------------------------------------------------------------------------------

    def _link(self, value: str) -> str:
        """``{{ field|link }}``: an event field written as a link, checked like the main link."""
        try:
            return checked_link(str(value), self.portal_base_url)
        except UnsafeLink as error:
            raise TemplateError(str(error)) from error

    def _linkify(self, text: str) -> Any:
        """Escape a line of text and make the links in it clickable (for the HTML layout); an
        address that is no link we vouch for (typed by someone, plain http) stays text."""
        from markupsafe import Markup, escape

        out, last = [], 0
        for match in _URL.finditer(text):
            url = match.group(0)
            try:
                checked_link(url, self.portal_base_url)
            except UnsafeLink:
                continue
            out.append(escape(text[last : match.start()]))
            out.append(Markup('<a href="{0}">{0}</a>').format(url))
            last = match.end()
        out.append(escape(text[last:]))
        return Markup("").join(out)

    # --- context -------------------------------------------------------------------------------

    def context(self, data: Mapping[str, Any], locale: str, link: str | None) -> dict[str, Any]:
        """What templates see: the event's fields (secrets already unsealed), the main link, and
        what the format filters need (locale, recipient's time zone)."""
        return {
            **data,
            "link": link,
            "locale": locale,
            "words": self.words(locale),
            "portal_url": self.portal_base_url,
            "zone": recipient_zone(data.get("time_zone"), locale, self.default_time_zone),
        }

    # --- rendering -----------------------------------------------------------------------------

    def email(self, template: str, locale: str, context: Mapping[str, Any], *, unsubscribe_url: str | None = None
              ) -> RenderedEmail:
        name = f"{template}.email"
        contexts: dict[str, Any] = {}
        typeset = french_spacing if locale.split("-")[0] == "fr" else _as_is
        subject = typeset(_one_line(self._block(name, "subject", locale, context, contexts=contexts)))
        body = typeset(_tidy(self._block(name, "body", locale, context, contexts=contexts)))
        link = context.get("link")
        action = typeset(_one_line(self._block(name, "action", locale, context, contexts=contexts))) if link else ""
        common = {block: self._common(block, locale, context, contexts, typeset) for block in COMMON_BLOCKS}
        marketing = unsubscribe_url is not None
        footer = common["marketing_footer"] if marketing else common["footer"]

        text_parts = [common["greeting"], body]
        if link:
            text_parts.append(f"{action}\n{link}")
        text_parts.append(common["signature"])
        text = "\n\n".join(text_parts) + "\n\n-- \n" + footer
        if marketing:
            text += f"\n{common['unsubscribe']}: {unsubscribe_url}"
        html = self.env.get_template("_layout.email.html.j2").render(
            lang=locale,
            subject=subject,
            greeting=common["greeting"],
            paragraphs=paragraphs(body),
            action=action,
            link=link,
            link_hint=common["link_hint"],
            signature=_paragraphs_of_plain_text(common["signature"]),
            footer=footer,
            unsubscribe=common["unsubscribe"],
            unsubscribe_url=unsubscribe_url,
        )
        return RenderedEmail(subject, text + "\n", html)

    def _common(self, block: str, locale: str, context: Mapping[str, Any], contexts: dict[str, Any],
                typeset: Any) -> str:
        """A ``_common`` block as it goes into an email; kept once made when it is plain text (a
        signature, a footer: the same in every email of the locale, and tidying and French
        spacing cost more than rendering)."""
        key = (block, locale)
        done = self._common_done.get(key)
        if done is not None:
            return done
        text = typeset(_tidy(self._block("_common", block, locale, context, contexts=contexts)))
        template = self._find("_common", block, locale)
        if template is not None and self._literal_text(template, block) is not None:
            self._common_done[key] = text
        return text

    def sms(self, template: str, locale: str, context: Mapping[str, Any], *, max_segments: int) -> RenderedSms:
        """The text message, refused when it needs more than ``max_segments`` (its line's cap)."""
        text = normalise(" ".join(self._block(f"{template}.sms", "text", locale, context).split()))
        counted = segments(text)
        if counted.count > max_segments:
            raise SmsTooLong(template, locale, counted, max_segments)
        return RenderedSms(text, counted)


def paragraphs(text: str) -> list[Paragraph]:
    """Blank lines separate paragraphs; a paragraph whose lines all start with "- " is a list."""
    result = []
    for chunk in text.split("\n\n"):
        lines = tuple(line.strip() for line in chunk.strip().splitlines() if line.strip())
        if not lines:
            continue
        bullets = all(line.startswith("- ") for line in lines)
        result.append(Paragraph(tuple(line[2:] for line in lines) if bullets else lines, bullets))
    return result


@lru_cache(maxsize=64)
def _paragraphs_of_plain_text(text: str) -> tuple[Paragraph, ...]:
    """``paragraphs`` of a text that recurs in every email of a locale (the signature)."""
    return tuple(paragraphs(text))


def _one_line(text: str) -> str:
    """Line breaks and runs of spaces become one space; no-break spaces (in times, amounts,
    before French punctuation) stay what they are."""
    return _SPACES.sub(" ", text).strip()


def _as_is(text: str) -> str:
    return text


def _tidy(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines))


# --- filters: formats of the recipient's locale, times in their zone ------------------------------


def _as_local(context: Any, value: datetime) -> datetime:
    return value.astimezone(context["zone"]) if value.tzinfo else value


@pass_context
def _money(context: Any, amount: Decimal | float | str, currency: str = "EUR") -> str:
    return format_for(context["locale"]).money(Decimal(str(amount)), currency)


@pass_context
def _number(context: Any, value: int) -> str:
    fmt = format_for(context["locale"])
    return f"{value:,}".replace(",", fmt.group)


@pass_context
def _date(context: Any, value: date | datetime) -> str:
    if isinstance(value, datetime):
        value = _as_local(context, value).date()
    return format_for(context["locale"]).date(value)


@pass_context
def _short_date(context: Any, value: date | datetime) -> str:
    if isinstance(value, datetime):
        value = _as_local(context, value).date()
    return format_for(context["locale"]).day_month(value)


@pass_context
def _long_date(context: Any, value: date | datetime) -> str:
    if isinstance(value, datetime):
        value = _as_local(context, value).date()
    return format_for(context["locale"]).long_date(value)


@pass_context
def _time(context: Any, value: datetime) -> str:
    return format_for(context["locale"]).time(_as_local(context, value))
