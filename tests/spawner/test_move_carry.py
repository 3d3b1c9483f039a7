"""The hand-over of a move's admission to the new server's start (hybridhub.spawner.move), without a hub."""

from __future__ import annotations

from types import SimpleNamespace

from hybridhub.spawner import move
from hybridhub.spawner.options import LaunchRequest

H100 = LaunchRequest("enterprise", "h100", 1, 1.0, "lab-vision")


class Starting(move.CarriedAdmissionMixin):
    """A spawner as far as take_carried sees it: the user, the server name, the validated launch."""

    def __init__(self, launch: LaunchRequest, key: str = "enterprise/h100"):
        self.user = SimpleNamespace(name="carol")
        self.name = "gpu"
        self.launch = launch
        self.offering = SimpleNamespace(key=key)


def test_the_start_takes_the_held_reservation_once_and_only_for_that_launch():
    carried = move.CarriedAdmission(41, H100, "enterprise/h100", moved_from=7, hardware="H100 80GB × 1")
    move._carried[("carol", "gpu")] = carried
    try:
        other = Starting(LaunchRequest("enterprise", "h100", 2, 1.0, "lab-vision"))
        assert other.take_carried() is None  # another launch (count 2): it admits for itself
        assert move._carried[("carol", "gpu")] is carried  # ...and the move still releases this one
        assert Starting(H100, key="enterprise/a100").take_carried() is None
        start = Starting(H100)
        assert start.take_carried() == 41 and start.moved_from == 7
        assert Starting(H100).take_carried() is None  # taken once: a second start admits again
        # the move's clean-up releases only what nobody took
        assert move._pop_carried(("carol", "gpu"), lambda c: c is carried) is None
    finally:
        move._carried.pop(("carol", "gpu"), None)
