"""The PeerJS offline queue (rtchub.peerjs.queue) with a fake clock: queue, hand over, expire."""

from __future__ import annotations

from rtchub.peerjs.queue import OfflineQueue


def offer(n: int) -> dict[str, object]:
    return {"type": "OFFER", "payload": {"n": n}}


def test_messages_wait_for_the_peer_and_come_out_in_order() -> None:
    q = OfflineQueue(expire_timeout=5.0)
    assert q.put("k", "alice", "bob", offer(1), now=0.0)
    assert q.put("k", "carol", "bob", offer(2), now=1.0)
    assert q.put("k", "alice", "bob", {"type": "CANDIDATE", "payload": {"n": 3}}, now=2.0)
    assert len(q) == 3
    assert q.take("k", "bob") == [("alice", offer(1)), ("carol", offer(2)),
                                  ("alice", {"type": "CANDIDATE", "payload": {"n": 3}})]
    assert q.take("k", "bob") == []
    assert q.expire(now=100.0) == []  # handed over: nothing left to expire


def test_leave_and_expire_are_never_queued() -> None:
    q = OfflineQueue(expire_timeout=5.0)
    assert not q.put("k", "alice", "bob", {"type": "LEAVE"}, now=0.0)
    assert not q.put("k", "alice", "bob", {"type": "EXPIRE"}, now=0.0)
    assert len(q) == 0 and q.expire(now=10.0) == []


def test_a_queue_expires_whole_after_the_timeout_with_one_notice_per_sender() -> None:
    q = OfflineQueue(expire_timeout=5.0)
    q.put("k", "alice", "ghost", offer(1), now=0.0)
    q.put("k", "alice", "ghost", offer(2), now=4.0)   # joins the same queue: same deadline
    q.put("k", "carol", "ghost", offer(3), now=4.5)
    q.put("k", "alice", "bob", offer(4), now=3.0)
    assert q.expire(now=5.0) == []                    # not older than the timeout yet
    assert q.expire(now=5.01) == [("k", "alice", "ghost"), ("k", "carol", "ghost")]
    assert q.take("k", "ghost") == []                 # dropped with its notices
    assert q.expire(now=8.0) == []
    assert q.expire(now=8.01) == [("k", "alice", "bob")]


def test_realms_are_separate() -> None:
    q = OfflineQueue(expire_timeout=5.0)
    q.put("k1", "alice", "bob", offer(1), now=0.0)
    assert q.take("k2", "bob") == []
    assert q.take("k1", "bob") == [("alice", offer(1))]


def test_a_full_queue_drops_the_newest() -> None:
    q = OfflineQueue(expire_timeout=5.0, max_per_peer=2)
    assert q.put("k", "a", "b", offer(1), now=0.0)
    assert q.put("k", "a", "b", offer(2), now=0.0)
    assert not q.put("k", "a", "b", offer(3), now=0.0)
    assert q.dropped == 1
    assert [m for _, m in q.take("k", "b")] == [offer(1), offer(2)]
