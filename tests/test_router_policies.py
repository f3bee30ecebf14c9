"""The router's pure parts, without servers: every policy, prompt-prefix hashing and its index,
and the ejection and backoff state machine."""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from rocm_infer.serving.policies import (
    POLICIES,
    Backoff,
    EndpointState,
    Health,
    PrefixIndex,
    RequestKey,
    check_due,
    check_failed,
    eject,
    least_loaded,
    message_prefixes,
    prefix_affinity,
    prompt_prefixes,
    readmit,
    resolve_policy,
    round_robin,
)
from rocm_infer.types import Message

A, B, C = "http://a:1", "http://b:2", "http://c:3"


def state(url: str, in_flight: int = 0, *, busy_elsewhere: int = 0, served: int = 0) -> EndpointState:
    return EndpointState(url, True, in_flight=in_flight, served=served, busy_elsewhere=busy_elsewhere)


# -- least_loaded ----------------------------------------------------------------------------------


def test_least_loaded_counts_its_own_requests_and_the_other_clients_busy_slots() -> None:
    states = [state(A, 2), state(B, 0, busy_elsewhere=3), state(C, 1)]
    assert [s.load for s in states] == [2, 3, 1]
    assert least_loaded(states, RequestKey()).url == C


def test_least_loaded_breaks_ties_by_fewest_served_then_order() -> None:
    assert least_loaded([state(A, 1, served=5), state(B, 1, served=2), state(C, 1, served=2)], RequestKey()).url == B
    assert least_loaded([state(A), state(B)], RequestKey()).url == A


def test_least_loaded_spreads_a_burst_evenly() -> None:
    # The router counts a request in flight as soon as it chooses: replay that for 9 requests.
    in_flight = {A: 0, B: 0, C: 0}
    for seq in range(9):
        chosen = least_loaded([state(url, n) for url, n in in_flight.items()], RequestKey(seq))
        in_flight[chosen.url] += 1
    assert in_flight == {A: 3, B: 3, C: 3}


# -- round_robin -----------------------------------------------------------------------------------


def test_round_robin_takes_each_endpoint_in_turn_whatever_the_load() -> None:
    states = [state(A, 9), state(B), state(C, 4)]
    assert [round_robin(states, RequestKey(seq)).url for seq in range(7)] == [A, B, C, A, B, C, A]


def test_round_robin_goes_on_over_the_endpoints_that_are_left() -> None:
    states = [state(A), state(C)]
    assert [round_robin(states, RequestKey(seq)).url for seq in range(4)] == [A, C, A, C]


# -- prefix_affinity -------------------------------------------------------------------------------


def test_prefix_affinity_sends_a_request_to_the_endpoint_holding_its_longest_prefix() -> None:
    states = [state(A), state(B, 1), state(C)]
    assert prefix_affinity(states, RequestKey(0, (1, 2), holders=(B, C))).url == B


def test_prefix_affinity_falls_back_to_the_next_holder_then_the_least_loaded_past_its_factor() -> None:
    # Least load 0: with the default factor 2 a holder may take the request while it runs one other.
    assert prefix_affinity([state(A, 1), state(B)], RequestKey(0, (1,), holders=(A,))).url == A
    assert prefix_affinity([state(A, 2), state(B), state(C, 1)], RequestKey(0, (1,), holders=(A, C))).url == C
    assert prefix_affinity([state(A, 2), state(B), state(C, 2)], RequestKey(0, (1,), holders=(A, C))).url == B


def test_prefix_affinity_keeps_every_endpoint_within_its_factor_of_the_least_loaded() -> None:
    # Every request shares one prefix that A holds: A takes them until it runs 3x the least loaded.
    policy = functools.partial(prefix_affinity, factor=3.0)
    in_flight = {A: 0, B: 0, C: 0}
    for seq in range(30):
        chosen = policy([state(url, n) for url, n in in_flight.items()], RequestKey(seq, (7,), holders=(A,)))
        in_flight[chosen.url] += 1
        assert in_flight[A] <= 3.0 * (min(in_flight.values()) + 1)
    assert in_flight[A] > in_flight[B] >= 1 and in_flight[A] > in_flight[C] >= 1


def test_prefix_affinity_with_factor_one_is_least_loaded_with_affinity_among_equals() -> None:
    policy = functools.partial(prefix_affinity, factor=1.0)
    assert policy([state(A, 1), state(B), state(C)], RequestKey(0, (1,), holders=(A,))).url == B
    assert policy([state(A), state(B), state(C)], RequestKey(0, (1,), holders=(C,))).url == C


def test_prefix_affinity_ignores_holders_that_are_not_candidates() -> None:
    # An ejected endpoint is not among the states the router passes.
    assert prefix_affinity([state(B, 1), state(C)], RequestKey(0, (1,), holders=(A,))).url == C


def test_prefix_affinity_refuses_a_factor_below_one() -> None:
    with pytest.raises(ValueError, match="factor"):
        prefix_affinity([state(A)], RequestKey(), factor=0.5)


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_refuses_an_empty_choice(policy: str) -> None:
    with pytest.raises(ValueError, match="at least one endpoint"):
        POLICIES[policy]([], RequestKey())


def test_resolve_policy_takes_a_name_or_a_function() -> None:
    assert resolve_policy("round_robin") is round_robin
    custom = functools.partial(prefix_affinity, factor=4.0)
    assert resolve_policy(custom) is custom
    with pytest.raises(ValueError, match="least_loaded"):
        resolve_policy("fastest")
    with pytest.raises(TypeError):
        resolve_policy(42)  # type: ignore[arg-type]


# -- prompt prefixes and the index -----------------------------------------------------------------


def test_prompt_prefixes_are_shared_exactly_as_far_as_two_prompts_agree() -> None:
    first = "x" * 300 + "the first question"
    second = "x" * 300 + "another question, longer than the first one" * 5
    one, two = prompt_prefixes(first, block=100), prompt_prefixes(second, block=100)
    assert len(one) == 3 and len(two) == 5
    assert one == two[:3]
    assert prompt_prefixes("y" + first[1:], block=100)[0] != one[0]
    assert prompt_prefixes("short", block=100) == ()
    assert len(prompt_prefixes("z" * 10_000, block=100, limit=7)) == 7


def test_message_prefixes_follow_a_conversation_turn_by_turn() -> None:
    turn1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you"}]
    one, two = message_prefixes(turn1), message_prefixes(turn2)
    assert len(two) == 4 and two[:2] == one
    # The same messages as Message values hash alike; other tools before them do not.
    assert message_prefixes([Message("system", "be brief"), Message("user", "hi")]) == one
    assert message_prefixes(turn1, seed="tools: get_weather") != one
    # Boundaries matter: ("ab", "c") is not ("a", "bc").
    split = [{"role": "user", "content": "ab"}, {"role": "user", "content": "c"}]
    other = [{"role": "user", "content": "a"}, {"role": "user", "content": "bc"}]
    assert message_prefixes(split)[-1] != message_prefixes(other)[-1]


def test_the_index_names_the_holder_of_the_longest_prefix_first() -> None:
    index = PrefixIndex()
    index.record((1, 2), A)
    index.record((1, 2, 3, 4), B)  # B took the longer conversation later: it holds 1 and 2 now
    index.record((9,), C)
    assert index.holders((1, 2, 3, 4, 5)) == (B,)
    index.record((1,), A)
    assert index.holders((1, 2, 3)) == (B, A)
    assert index.holders((8,)) == ()
    index.forget(B)
    assert index.holders((1, 2, 3)) == (A,)
    assert len(index) == 2


def test_the_index_forgets_the_least_recently_recorded_past_its_capacity() -> None:
    index = PrefixIndex(capacity=3)
    index.record((1, 2, 3), A)
    index.record((1,), B)  # 1 is recorded again: 2 is now the oldest
    index.record((4,), C)
    assert len(index) == 3
    assert index.holders((2,)) == ()
    assert index.holders((1,)) == (B,) and index.holders((3,)) == (A,) and index.holders((4,)) == (C,)
    with pytest.raises(ValueError):
        PrefixIndex(capacity=0)


def test_affinity_keeps_conversations_home_and_spreads_them_over_the_endpoints() -> None:
    # Six conversations, four turns each, played through the policy and the index as the router does.
    index = PrefixIndex()
    homes: dict[int, set[str]] = {n: set() for n in range(6)}
    for turn in range(4):
        in_flight = {A: 0, B: 0, C: 0}
        for n in range(6):
            messages = [{"role": "user", "content": f"conversation {n}, turn {t}"} for t in range(turn + 1)]
            prefixes = message_prefixes(messages)
            key = RequestKey(turn * 6 + n, prefixes, index.holders(prefixes))
            chosen = prefix_affinity([state(url, k) for url, k in in_flight.items()], key)
            in_flight[chosen.url] += 1
            index.record(prefixes, chosen.url)
            homes[n].add(chosen.url)
    assert all(len(urls) == 1 for urls in homes.values())
    assert Counter(next(iter(urls)) for urls in homes.values()) == {A: 2, B: 2, C: 2}


# -- ejection and backoff --------------------------------------------------------------------------


def test_backoff_doubles_from_first_up_to_its_cap() -> None:
    backoff = Backoff(first=0.5, factor=2.0, cap=5.0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert Backoff(first=1.0, cap=30.0).delay(10_000) == 30.0
    for bad in ({"first": 0.0}, {"factor": 0.5}, {"first": 2.0, "cap": 1.0}):
        with pytest.raises(ValueError):
            Backoff(**bad)


def test_an_ejected_endpoint_is_checked_with_growing_backoff_until_it_is_readmitted() -> None:
    backoff = Backoff(first=1.0, factor=2.0, cap=8.0)
    health = Health()
    assert health.healthy and not check_due(health, 100.0)

    health = eject(health, 100.0, backoff)
    assert not health.healthy and health.retry_at == 101.0
    assert not check_due(health, 100.5) and check_due(health, 101.0)

    retries = []
    for now in (101.0, 103.0, 107.0, 115.0, 123.0):
        assert check_due(health, now)
        health = check_failed(health, now, backoff)
        retries.append(health.retry_at - now)
    assert retries == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert health.failed_checks == 5

    health = readmit()
    assert health == Health() and not check_due(health, 1e9)
    # A new ejection starts the backoff over.
    assert eject(health, 200.0, backoff).retry_at == 201.0


def test_more_failed_requests_on_an_ejected_endpoint_do_not_push_its_check_back() -> None:
    # Every stream on a dead server fails at once: the first ejects it, the rest change nothing.
    backoff = Backoff(first=1.0)
    health = eject(Health(), 10.0, backoff)
    assert eject(health, 10.2, backoff) is health
    later = check_failed(health, 11.0, backoff)
    assert eject(later, 11.5, backoff) is later
