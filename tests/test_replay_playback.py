"""Replay pacing as a state machine, on a manual clock: frames at wall interval
step / speed, coalesced to the frame budget, pause / play / seek / speed / end."""

from __future__ import annotations

import pytest

from replay.playback import ManualClock, Playback

S = 1_000  # ms


def run(pb: Playback, clock: ManualClock) -> list[int]:
    shown = []
    while (t := pb.due(clock.now())) is not None:
        pb.shown(t, clock.now())
        shown.append(t)
    return shown


def test_frames_paced_by_simulated_time():
    clock = ManualClock()
    pb = Playback(0, 60 * S, 10 * S, 60.0, clock.now(), min_interval_s=1 / 30)
    assert run(pb, clock) == [0]  # the first frame at once
    assert pb.wait(clock.now()) == pytest.approx(10 / 60)
    clock.advance(10 / 60 - 0.001)
    assert run(pb, clock) == []
    clock.advance(0.001)
    assert run(pb, clock) == [10 * S]
    for expected in (20, 30, 40, 50):
        clock.advance(10 / 60)
        assert run(pb, clock) == [expected * S]
    clock.advance(10 / 60)
    assert run(pb, clock) == [60 * S] and pb.ended and pb.wait(clock.now()) is None


def test_steps_faster_than_the_budget_are_coalesced():
    clock = ManualClock()
    # 10 s steps at 3600x come every 2.8 ms; the budget is 1/30 s = 120 s of history
    pb = Playback(0, 3600 * S, 10 * S, 3600.0, clock.now(), min_interval_s=1 / 30)
    run(pb, clock)
    assert pb.wait(clock.now()) == pytest.approx(1 / 30)
    clock.advance(1 / 30)
    assert run(pb, clock) == [120 * S]
    clock.advance(0.01)  # steps are due, the budget is not
    assert run(pb, clock) == []
    clock.advance(0.03)  # 0.04 s since the last frame: newest due step, 144 s on
    assert run(pb, clock) == [260 * S]
    clock.advance(5.0)  # a stall (slow frame): jump to the newest, never fall behind
    assert run(pb, clock) == [3600 * S] and pb.ended


def test_pause_play_seek_speed():
    clock = ManualClock()
    pb = Playback(0, 600 * S, 10 * S, 60.0, clock.now())
    run(pb, clock)
    pb.pause()
    clock.advance(100)
    assert run(pb, clock) == [] and pb.wait(clock.now()) is None
    pb.play(clock.now())  # resumes from the frame on screen, not from the wall clock
    clock.advance(10 / 60)
    assert run(pb, clock) == [10 * S]
    pb.seek(333 * S, clock.now())
    assert run(pb, clock) == [333 * S]  # instant, then the grid follows the seek
    clock.advance(10 / 60)
    assert run(pb, clock) == [343 * S]
    pb.set_speed(600.0, clock.now())
    clock.advance(10 / 600)
    assert run(pb, clock) == [353 * S]
    pb.pause()
    pb.seek(100 * S, clock.now())  # scrubbing while paused shows the frame, stays paused
    assert run(pb, clock) == [100 * S] and pb.paused
    with pytest.raises(ValueError):
        pb.seek(601 * S, clock.now())
    with pytest.raises(ValueError):
        pb.set_speed(0.5, clock.now())
    pb.seek(600 * S, clock.now())
    assert run(pb, clock) == [600 * S] and pb.ended
    pb.play(clock.now())  # play after the end starts again
    assert run(pb, clock) == [0] and pb.playing


def test_range_not_a_multiple_of_step_ends_at_to():
    clock = ManualClock()
    pb = Playback(0, 25 * S, 10 * S, 10.0, clock.now())
    shown = run(pb, clock)
    for _ in range(3):
        clock.advance(1.0)
        shown += run(pb, clock)
    assert shown == [0, 10 * S, 20 * S, 25 * S] and pb.ended


def test_a_speed_change_between_frames_keeps_the_simulated_time_reached():
    clock = ManualClock()
    pb = Playback(0, 600 * S, 10 * S, 1.0, clock.now())
    assert run(pb, clock) == [0]
    clock.advance(9.0)  # 9 s of the first 10 s step played at 1x
    pb.set_speed(10.0, clock.now())
    assert pb.wait(clock.now()) == pytest.approx(0.1)  # the last 1 s at 10x
    clock.advance(0.1)
    assert run(pb, clock) == [10 * S]  # on the grid, not re-based at the change
    clock.advance(1.0)
    assert run(pb, clock) == [20 * S]


def test_speed_messages_more_often_than_a_step_do_not_stall_playback():
    clock = ManualClock()
    pb = Playback(0, 600 * S, 10 * S, 1.0, clock.now())
    run(pb, clock)
    shown = []
    for _ in range(12):  # the same speed re-sent every 5 s for a minute
        clock.advance(5.0)
        pb.set_speed(1.0, clock.now())
        shown += run(pb, clock)
    assert shown == [t * S for t in range(10, 70, 10)]


def test_a_speed_change_while_paused_resumes_from_the_frame_on_screen():
    clock = ManualClock()
    pb = Playback(0, 600 * S, 10 * S, 1.0, clock.now())
    run(pb, clock)
    clock.advance(7.0)
    pb.pause()
    clock.advance(30.0)
    pb.set_speed(2.0, clock.now())
    assert run(pb, clock) == [] and pb.wait(clock.now()) is None
    pb.play(clock.now())
    clock.advance(5.0)  # 10 s of history at 2x from the frame at 0
    assert run(pb, clock) == [10 * S]
