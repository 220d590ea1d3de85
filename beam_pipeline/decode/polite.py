"""Politeness towards other people's web servers: who is asking, and whether they said no to AI use."""

from __future__ import annotations

from collections.abc import Iterable

from beam_pipeline import __version__

PRODUCT = "beam-image-labeller"
DEFAULT_USER_AGENT = f"{PRODUCT}/{__version__}"
# X-Robots-Tag directives that refuse use of the content for AI (training or inference): the `noai` / `noimageai`
# convention (DeviantArt's, followed by several crawlers). Other directives (noindex, nofollow...) are about search
# engines and are not ours to honour.
REFUSING = frozenset({"noai", "noimageai"})
# Directives that take a value after a colon, so "NAME: ..." is not a user-agent prefix for them.
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def refusal(header_values: Iterable[str], user_agent: str) -> str | None:
    """The refusing directive in these X-Robots-Tag header values that applies to us, else None.

    A value is a comma-separated list of directives, optionally after a user-agent name and a colon
    (`otherbot: noai` applies to otherbot only): bare directives apply to every agent, named ones when the name is
    our product token or the first word of `user_agent` (before its `/`).
    """
    ours = {PRODUCT, user_agent.split("/", 1)[0].strip().lower()}
    for value in header_values:
        agent, directives = None, value
        head, colon, rest = value.partition(":")
        if colon and head.strip().lower() not in _VALUED and "," not in head:
            agent, directives = head.strip().lower(), rest
        if agent is not None and agent not in ours:
            continue
        for directive in directives.split(","):
            if directive.strip().lower() in REFUSING:
                return directive.strip().lower()
    return None
