"""Webhooks: a finished job's notice POSTed to its owner's URL, through the SSRF-safe fetcher
with a deadline however the receiver trickles."""

from __future__ import annotations

from captioner.crawl import fetch, urls

__all__ = ["WEBHOOK_DEADLINE_S", "WEBHOOK_TIMEOUT_S", "post_json"]

WEBHOOK_TIMEOUT_S = 10.0  # the most silence between two bytes of the answer


WEBHOOK_DEADLINE_S = 30.0  # the most one delivery may take in all, however the receiver trickles


def post_json(url: str, body: bytes, limits: urls.FetchLimits) -> int:
    """POST ``body`` to ``url`` with the fetcher's SSRF rules: the URL's addresses are checked
    and connected to directly (no second DNS lookup), no redirects followed. Returns the
    status; raises ``FetchError`` for a connection failure or a status that is not 2xx, and
    ``FetchTimeout`` past ``WEBHOOK_DEADLINE_S`` in all.

    Only the status matters, so the answer's body is never read: a receiver that streams an
    endless body costs nothing, and one that answers a byte at a time is cut off by the
    total deadline (socket timeouts alone only bound the silence between two bytes)."""
    import urllib3

    checked = urls.check_url(url, limits)
    headers = {
        "Host": checked.host_header,
        "User-Agent": limits.user_agent,
        "Content-Type": "application/json",
        "Connection": "close",
    }
    deadline = fetch.Deadline(WEBHOOK_DEADLINE_S)
    last: Exception | None = None
    try:
        for address in checked.addresses:
            remaining = _webhook_time_left(deadline, checked.host)
            timeout = urllib3.Timeout(
                connect=min(limits.connect_timeout, remaining),
                read=min(WEBHOOK_TIMEOUT_S, remaining),
            )
            pool = fetch.pinned_pool(checked, address, timeout, limits, deadline)
            try:
                response = pool.urlopen(
                    "POST",
                    checked.target,
                    body=body,
                    headers=headers,
                    redirect=False,
                    retries=False,
                    preload_content=False,  # the status line and headers only
                    decode_content=False,
                )
                status = response.status
                response.close()  # unread: the connection closes, nothing more is received
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last = exc
                continue
            finally:
                pool.close()
                deadline.release()
            if not 200 <= status < 300:
                raise urls.FetchError(f"the webhook answered HTTP {status}")
            return status
        _webhook_time_left(deadline, checked.host)
    finally:
        deadline.close()
    raise urls.FetchError(f"could not deliver the webhook to {checked.host}") from last


def _webhook_time_left(deadline: fetch.Deadline, host: str) -> float:
    try:
        return deadline.remaining()
    except urls.FetchTimeout:
        raise urls.FetchTimeout(
            f"the webhook receiver {host} took longer than {WEBHOOK_DEADLINE_S:.0f} s"
        ) from None
