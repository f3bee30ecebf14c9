"""How a :class:`~rocm_infer.serving.Router` chooses an endpoint, and when it ejects and re-admits one.

Everything here is pure: values in, values out, no I/O and no clock of its
own (the time is an argument). The router's async machinery gathers the
inputs (what it has in flight, what ``/slots`` said, which endpoint last took
a prompt prefix) and acts on the answers.

* A **policy** is a function ``(states, key) -> state``: given the
  :class:`EndpointState` of every endpoint that may take a request and the
  request's :class:`RequestKey`, it returns one of those states.
  :func:`least_loaded`, :func:`prefix_affinity` and :func:`round_robin` are
  the built-in ones; any function of that shape is a policy too.
* :func:`prompt_prefixes` and :func:`message_prefixes` hash a request's
  prompt prefixes; a :class:`PrefixIndex` remembers which endpoint took each.
* :class:`Health` and :func:`eject`, :func:`check_failed`, :func:`readmit`,
  :func:`check_due` are the ejection and backoff state machine.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..types import Message

__all__ = [
    "POLICIES",
    "PREFIX_FREE",
    "Backoff",
    "EndpointState",
    "Health",
    "Policy",
    "PrefixIndex",
    "RequestKey",
    "check_due",
    "check_failed",
    "eject",
    "least_loaded",
    "message_prefixes",
    "prefix_affinity",
    "prompt_prefixes",
    "readmit",
    "resolve_policy",
    "round_robin",
]


@dataclass(frozen=True, slots=True)
class EndpointState:
    """One endpoint of a router, as the router sees it now.

    * ``url``: the server's base URL (for a model rocm_infer started, its
      current server's: a restart gives it a new port).
    * ``healthy``: False while the endpoint is ejected (it failed, and has
      not passed a health check since).
    * ``in_flight``: this router's requests on it now.
    * ``slots_busy``: the busy slots llama-server reported at the last
      ``/slots`` poll, every client's requests included; ``busy_elsewhere``
      is the part of those that were not this router's.
    * ``served``: requests it took to their end (or until the caller stopped
      reading); ``failures``: requests that failed because of the endpoint
      (refused, 503, died) and health checks it failed.
    * ``slots``: its slot count, as ``/slots`` last said (0 until then).
    """

    url: str
    healthy: bool
    in_flight: int = 0
    slots_busy: int = 0
    served: int = 0
    failures: int = 0
    slots: int = 0
    busy_elsewhere: int = 0

    @property
    def load(self) -> int:
        """The requests it is working on: this router's in flight, plus the other clients' busy slots."""
        return self.in_flight + self.busy_elsewhere


@dataclass(frozen=True, slots=True)
class RequestKey:
    """What a policy knows of a request.

    ``seq`` numbers the router's requests (0, 1, 2 ...). ``prefixes`` are
    hashes of the request's prompt prefixes, shortest first
    (:func:`prompt_prefixes`, :func:`message_prefixes`); ``holders`` the
    URLs of the endpoints that last took one of them, the one that took the
    longest first: those are likely to hold it in their KV cache.
    """

    seq: int = 0
    prefixes: tuple[int, ...] = ()
    holders: tuple[str, ...] = ()


Policy = Callable[[Sequence[EndpointState], RequestKey], EndpointState]
"""A routing policy: the state of every endpoint that may take the request, the request's key ->
the chosen one of those states."""


def _check(states: Sequence[EndpointState]) -> None:
    if not states:
        raise ValueError("a policy needs at least one endpoint to choose from")


def least_loaded(states: Sequence[EndpointState], key: RequestKey) -> EndpointState:
    """The endpoint with the least :attr:`~EndpointState.load`; between equals, the one that
    served fewest, then the first. ValueError for no states."""
    _check(states)
    return min(states, key=lambda state: (state.load, state.served))


def round_robin(states: Sequence[EndpointState], key: RequestKey) -> EndpointState:
    """Each endpoint in turn, by the request's number. ValueError for no states."""
    _check(states)
    return states[key.seq % len(states)]


DEFAULT_AFFINITY_FACTOR = 2.0


def prefix_affinity(
    states: Sequence[EndpointState], key: RequestKey, *, factor: float = DEFAULT_AFFINITY_FACTOR
) -> EndpointState:
    """The endpoint that holds the longest prefix of the request, unless that would load it past
    ``factor`` times the least loaded one; then the next holder, and at last :func:`least_loaded`.

    "Past the factor" means that with this request its load would exceed
    ``factor * (least load + 1)``: with the default 2 and an idle endpoint
    elsewhere, a holder takes the request while it runs at most one other.
    ``factor`` 1 makes it least-loaded with affinity as the tie-break; a
    large one, affinity at any cost. ValueError for no states or a factor
    below 1.
    """
    _check(states)
    if not factor >= 1.0:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    limit = factor * (min(state.load for state in states) + 1)
    by_url = {state.url: state for state in states}
    for url in key.holders:
        holder = by_url.get(url)
        if holder is not None and holder.load + 1 <= limit:
            return holder
    return least_loaded(states, key)


PREFIX_FREE: tuple[Policy, ...] = (least_loaded, round_robin)
"""The built-in policies that never read a request's prefixes: a router with one of them hashes
none (hashing a long conversation costs more than the rest of routing it)."""

POLICIES: Mapping[str, Policy] = {
    "least_loaded": least_loaded,
    "prefix_affinity": prefix_affinity,
    "round_robin": round_robin,
}
"""The built-in policies by name."""


def resolve_policy(policy: str | Policy) -> Policy:
    """The policy a name stands for (a key of :data:`POLICIES`), or ``policy`` itself if it is a
    function. ValueError for an unknown name, TypeError for anything else."""
    if isinstance(policy, str):
        try:
            return POLICIES[policy]
        except KeyError:
            raise ValueError(f"unknown routing policy {policy!r}: the policies are {sorted(POLICIES)}") from None
    if not callable(policy):
        raise TypeError(f"policy must be a policy name or a function (states, key) -> state, not {policy!r}")
    return policy


# -- prompt prefixes -------------------------------------------------------------------------------

# A prompt is hashed in blocks of this many characters (about 30 tokens of English), up to this
# many blocks: requests that share that much are one conversation as far as routing goes.
BLOCK_CHARS = 128
MAX_BLOCKS = 128
# A conversation is hashed message by message, up to this many messages.
MAX_MESSAGES = 256


def _chain(parts: Iterable[bytes], seed: bytes = b"") -> tuple[int, ...]:
    """Hashes of every prefix of ``parts``: each hash covers the seed and all parts up to it."""
    state = hashlib.blake2b(seed, digest_size=8)
    hashes: list[int] = []
    for part in parts:
        # Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        state.update(len(part).to_bytes(8, "little"))
        state.update(part)
        hashes.append(int.from_bytes(state.copy().digest(), "little"))
    return tuple(hashes)


def prompt_prefixes(prompt: str, *, block: int = BLOCK_CHARS, limit: int = MAX_BLOCKS) -> tuple[int, ...]:
    """Hashes of ``prompt``'s prefixes that end on a block boundary (every ``block`` characters,
    ``limit`` blocks at most), shortest first. A prompt shorter than one block has none."""
    whole = min(len(prompt) // block, limit)
    return _chain(prompt[i * block : (i + 1) * block].encode("utf-8", "surrogatepass") for i in range(whole))


def _message_bytes(message: Message | Mapping[str, Any]) -> bytes:
    # The message as it is sent, so that whatever the server sees differently hashes differently.
    return json.dumps(Message.coerce(message).to_openai(), sort_keys=True).encode("utf-8", "surrogatepass")


def message_prefixes(
    messages: Sequence[Message | Mapping[str, Any]], *, seed: str = "", limit: int = MAX_MESSAGES
) -> tuple[int, ...]:
    """Hashes of the conversation's prefixes, one per message (``limit`` at most), shortest
    first. ``seed`` is what comes before the first message in the prompt (the tools, say):
    conversations with another seed share no prefix. Raises what ``Message.coerce`` raises for
    a message that is not one."""
    return _chain((_message_bytes(m) for m in messages[:limit]), seed.encode("utf-8", "surrogatepass"))


class PrefixIndex:
    """Which endpoint (by URL) last took each prompt prefix: the router's memory for
    :func:`prefix_affinity`, bounded to the ``capacity`` most recently recorded prefixes."""

    __slots__ = ("_holders", "capacity")

    def __init__(self, capacity: int = 65536) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self._holders: collections.OrderedDict[int, str] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._holders)

    def holders(self, prefixes: Sequence[int]) -> tuple[str, ...]:
        """The URLs that took a prefix of ``prefixes``, the one that took the longest first, each once."""
        found: list[str] = []
        get = self._holders.get
        for prefix in reversed(prefixes):
            url = get(prefix)
            if url is not None and url not in found:
                found.append(url)
        return tuple(found)

    def record(self, prefixes: Iterable[int], url: str) -> None:
        """``url`` took every one of ``prefixes``; the least recently recorded go past the capacity."""
        holders = self._holders
        for prefix in prefixes:
            holders[prefix] = url
            holders.move_to_end(prefix)
        while len(holders) > self.capacity:
            holders.popitem(last=False)

    def forget(self, url: str) -> None:
        """Drop every prefix ``url`` took (its KV cache is gone: it died, or was restarted)."""
        for prefix in [p for p, holder in self._holders.items() if holder == url]:
            del self._holders[prefix]


# -- ejection and re-admission --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before an ejected endpoint's health checks: ``first`` after the ejection, then
    ``factor`` times longer after every failed check, never more than ``cap``."""

    first: float = 0.5
    factor: float = 2.0
    cap: float = 30.0

    def __post_init__(self) -> None:
        if not self.first > 0:
            raise ValueError(f"first must be > 0, got {self.first!r}")
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")
        if not self.cap >= self.first:
            raise ValueError(f"cap must be >= first ({self.first!r}), got {self.cap!r}")

    def delay(self, failed_checks: int) -> float:
        """Seconds to the next check after ``failed_checks`` failed ones in a row."""
        return min(self.cap, self.first * self.factor ** min(failed_checks, 64))


@dataclass(frozen=True, slots=True)
class Health:
    """Whether an endpoint takes requests; if not, how many health checks it failed in a row
    since it was ejected and when (a monotonic time) it is checked next."""

    healthy: bool = True
    failed_checks: int = 0
    retry_at: float = 0.0


def eject(health: Health, now: float, backoff: Backoff) -> Health:
    """A request found the endpoint broken: take it out, to be checked ``backoff.first`` from
    ``now``. An endpoint already out stays as it is (its checks keep their own backoff)."""
    if not health.healthy:
        return health
    return Health(False, 0, now + backoff.delay(0))


def check_failed(health: Health, now: float, backoff: Backoff) -> Health:
    """A health check failed: stay out, and wait longer before the next one."""
    failed = health.failed_checks + 1
    return Health(False, failed, now + backoff.delay(failed))


def readmit() -> Health:
    """A health check passed: the endpoint takes requests again, its backoff forgotten."""
    return Health()


def check_due(health: Health, now: float) -> bool:
    """True when an ejected endpoint's next health check is due."""
    return not health.healthy and now >= health.retry_at
