from __future__ import annotations

from agentplex.core.streams import Ring


def test_ring_keeps_the_newest_items_with_increasing_ids() -> None:
    ring = Ring(3)
    for n in range(5):
        ring.append("s", {"n": n})
    assert len(ring) == 3
    assert [i.data["n"] for i in ring.after(0, 10)] == [2, 3, 4]
    assert [i.id for i in ring.after(3, 10)] == [4, 5]
    assert ring.after(5, 10) == []
    assert [i.id for i in ring.after(0, 2)] == [3, 4]
