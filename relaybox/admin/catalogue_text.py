"""The error catalogue's meanings as translatable messages (``relaybox.errors.CATALOGUE`` is the
one source; these markers only let Babel extract the same English text for the .po files).
A test checks that every catalogue meaning is listed here, so the two never drift apart."""
from __future__ import annotations


def N_(text: str) -> str:
    return text


MEANINGS = [
    N_("API key or auth header missing or invalid"),
    N_("API access not enabled for this account"),
    N_("Resource not found (or not yours)"),
    N_("A parameter is invalid; `field` names it"),
    N_("Idempotency-Key reused while running (409) or with another body (422)"),
    N_("Requested device or number unavailable or invalid for routing"),
    N_("Account balance too low"),
    N_("Subscription expired and needs renewal"),
    N_("Sending limit or safety threshold exceeded"),
    N_("Sending paused by queue state or policy"),
    N_("Could not queue the message"),
    N_("Unexpected error; logged with the correlation id in the body"),
    N_("The path exists but not with this method"),
    N_("The resource is not in a state that allows this"),
]
