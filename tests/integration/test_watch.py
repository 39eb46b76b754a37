"""The dataset watcher's debounce against real SeaweedFS: uploads spread over the window give one
announcement, a restart announces nothing twice, and a crash mid-announcement re-sends the same
event (same id) rather than a new one. Clocks are given explicitly: no test waits for real time
except the last, which runs the polling loop for about a second."""

import pytest

from transferflow import storage
from transferflow.retraining.watch import Watcher, WatchState, listing_fingerprint, state_key, watch
from transferflow.storage import PreconditionFailed


@pytest.fixture
def prefix(bucket):
    storage.put_bytes(bucket, "incoming/class_0/a.png", b"a", "image/png")
    return f"s3://{bucket}/incoming/"


def upload(bucket, name: str) -> None:
    storage.put_bytes(bucket, f"incoming/class_0/{name}.png", name.encode(), "image/png")


def test_what_was_there_first_is_the_baseline(prefix):
    watcher = Watcher(prefix, debounce_s=10)
    assert watcher.poll(now=0) is None
    assert watcher.poll(now=1000) is None  # nothing changed since: nothing to announce


def test_uploads_spread_over_the_window_are_announced_once_after_it(bucket, prefix):
    watcher = Watcher(prefix, debounce_s=10)
    watcher.poll(now=0)
    for now, part in ((100, "b"), (106, "c"), (112, "d")):  # three parts, each within 10 s of the last
        upload(bucket, part)
        assert watcher.poll(now=now) is None
        assert watcher.poll(now=now + 5) is None  # quiet for less than the window
    change = watcher.poll(now=122)  # 10 s after the last part
    assert change is not None and change.fingerprint == listing_fingerprint(prefix)[0] and change.objects == 4
    watcher.announced(change)
    assert watcher.poll(now=500) is None and Watcher(prefix, 10).poll(now=900) is None  # nor after a restart


def test_a_crash_before_recording_the_announcement_resends_the_same_event(bucket, prefix):
    first = Watcher(prefix, debounce_s=10)
    first.poll(now=0)
    upload(bucket, "b")
    first.poll(now=1)
    change = first.poll(now=20)  # the watcher dies before announced()
    restarted = Watcher(prefix, debounce_s=10)
    again = restarted.poll(now=30)
    assert again == change  # same fingerprint, same event id: the trigger service drops the copy
    restarted.announced(again)
    assert restarted.poll(now=40) is None
    upload(bucket, "c")
    restarted.poll(now=50)
    later = restarted.poll(now=70)
    assert later.event_id != change.event_id  # a new change is a new event


def test_a_watcher_with_a_stale_state_loses_its_write(bucket, prefix):
    """Two watchers on one prefix: the one that read the state before the other wrote it cannot
    write over it (a conditional write), so it never announces what the other decided."""
    one, two = Watcher(prefix, debounce_s=10), Watcher(prefix, debounce_s=10)
    one.poll(now=0)
    upload(bucket, "b")
    one.poll(now=1)
    stale, etag = storage.get_json(bucket, state_key(prefix))
    assert one.poll(now=20) is not None  # the first records that it is announcing
    with pytest.raises(PreconditionFailed):
        two._write(bucket, state_key(prefix), WatchState.model_validate(stale), etag)
    assert two.poll(now=21) == one.poll(now=21)  # what it reads next: the same event, to re-send


def test_the_loop_emits_once_and_survives_an_emitter_that_fails(bucket, prefix):
    sent, failures = [], [1]

    def emit(change):
        if failures:
            failures.pop()
            raise OSError("the Prefect server is restarting")
        sent.append(change)

    watch([prefix], emit, interval_s=0.1, debounce_s=0, polls=2)  # the baseline, then nothing new
    upload(bucket, "b")
    watch([prefix], emit, interval_s=0.1, debounce_s=0, polls=5)
    assert len(sent) == 1 and sent[0].fingerprint == listing_fingerprint(prefix)[0]
