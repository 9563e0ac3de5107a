"""Rendezvous hashing: deterministic, spread over the nodes, and only a gone node's keys move."""

from __future__ import annotations

from collections import Counter

from api.inference_tier.rendezvous import rendezvous_order, routing_key

NODES = [f"http://inference-{index}:8100" for index in range(4)]
KEYS = [routing_key("tiny-random-llama", f"ft:tiny-random-llama:adapter-{index}") for index in range(2000)]


def first_choices(nodes: list[str]) -> dict[str, str]:
    return {key: rendezvous_order(key, nodes)[0] for key in KEYS}


def test_the_order_is_a_permutation_that_does_not_depend_on_the_order_nodes_are_given_in() -> None:
    key = KEYS[0]
    order = rendezvous_order(key, NODES)
    assert sorted(order) == sorted(NODES)
    assert rendezvous_order(key, list(reversed(NODES))) == order
    assert rendezvous_order(key, NODES) == order  # stable across calls (no per-process hash seed)


def test_keys_spread_over_every_node() -> None:
    counts = Counter(first_choices(NODES).values())
    assert set(counts) == set(NODES)
    assert min(counts.values()) > len(KEYS) / len(NODES) * 0.8


def test_removing_a_node_moves_only_its_keys_each_to_its_second_choice() -> None:
    before = first_choices(NODES)
    gone = NODES[1]
    after = first_choices([node for node in NODES if node != gone])
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == gone}
    assert all(after[key] == rendezvous_order(key, NODES)[1] for key in moved)


def test_adding_a_node_takes_keys_only_for_itself() -> None:
    before = first_choices(NODES[:3])
    after = first_choices(NODES)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved and all(after[key] == NODES[3] for key in moved)
    assert len(moved) < len(KEYS) / 4 * 1.2


def test_the_base_model_and_the_adapter_both_count_in_the_key() -> None:
    assert routing_key("a", "b") != routing_key("a", None)
    assert routing_key("ab", None) != routing_key("a", "b")
