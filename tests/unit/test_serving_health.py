"""What the server says about itself under stress: a version that fails to load is retried with
backoff and shown; a server stuck behind its alias turns unready after the grace period; a full
queue refuses with 429; a batcher that died fails what waits and readiness."""

import asyncio

import numpy as np
import pytest

from tests.unit.test_serving import images, version
from transferflow.errors import RegistryError, RequestError
from transferflow.serving.batcher import MicroBatcher
from transferflow.serving.follower import AliasFollower, Reference, backoff_s
from transferflow.serving.health import ServingHealth
from transferflow.serving.versions import ModelSlot


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follower_at(monkeypatch, health: ServingHealth, loader, clock: Clock, failures: list):
    """A follower of m@production whose time is `clock` and which already serves version 1."""
    monkeypatch.setattr("transferflow.serving.follower.time.monotonic", clock)
    slot = ModelSlot()
    slot.swap(version(1))
    return AliasFollower(Reference("m", "production", None), slot, 10.0, on_swap=lambda old, new: None,
                         on_fatal=lambda exc: None, loader=loader, health=health,
                         on_failure=lambda number, exc: failures.append(number))


def test_a_version_that_fails_to_load_is_retried_with_backoff_and_shown(monkeypatch):
    clock, failures, attempts = Clock(), [], []

    def loader(name, number):
        attempts.append(clock.now)
        if len(attempts) < 3:
            raise RegistryError(f"integrity check failed for {name}:{number}")
        return version(number)

    health = ServingHealth(stale_after_s=60, clock=clock)
    follower = follower_at(monkeypatch, health, loader, clock, failures)
    health.alias_points_at(2)
    assert not follower.catch_up() and failures == [2]
    states = health.version_states(follower.slot)
    assert states == [{"version": "2", "state": "END", "status": {
                          "error_code": "UNKNOWN", "error_message": "integrity check failed for m:2"}},
                      {"version": "1", "state": "AVAILABLE",
                       "status": {"error_code": "OK", "error_message": ""}}]
    clock.now += 9.9
    assert not follower.catch_up() and len(attempts) == 1  # not due yet: one poll after the failure
    clock.now += 0.1
    assert not follower.catch_up() and len(attempts) == 2 and health.failure.attempts == 2
    clock.now += 19.9
    assert not follower.catch_up() and len(attempts) == 2  # doubled: 20 s after the second failure
    clock.now += 0.1
    assert follower.catch_up() and follower.slot.current.version == 2 and failures == [2, 2]
    assert health.failure is None
    assert [s["state"] for s in health.version_states(follower.slot)] == ["AVAILABLE"]


def test_backoff_doubles_from_one_poll_up_to_a_cap():
    assert [backoff_s(10, n) for n in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert backoff_s(10, 30) == 300 and backoff_s(600, 3) == 600


def test_readiness_fails_once_stuck_behind_the_alias_beyond_the_grace_period():
    clock = Clock()
    health = ServingHealth(stale_after_s=60, clock=clock)
    assert health.readiness("m", None, True) == (503, {"status": "loading", "model": "m"})
    served = version(1)
    health.alias_points_at(1)
    assert health.readiness("m", served, True) == (200, {"status": "ready", "model": "m", "version": 1})
    health.alias_points_at(2)  # moved; version 2 is not loaded yet
    clock.now += 60
    status, body = health.readiness("m", served, True)
    assert status == 200 and body["alias_version"] == 2 and body["behind_s"] == 60
    clock.now += 1
    status, body = health.readiness("m", served, True)
    assert status == 503 and body["status"] == "stale" and "points at version 2" in body["reason"]
    health.alias_points_at(1)  # rolled back: in step again
    assert health.readiness("m", served, True)[0] == 200
    status, body = health.readiness("m", served, False)
    assert status == 503 and body["status"] == "broken"


def run(coroutine):
    return asyncio.run(coroutine)


class BlockedModel:
    """predict_on_batch waits until released: the queue fills behind it."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def predict_on_batch(self, pixels):
        self.release.wait(10)
        return np.zeros((len(pixels), 2), np.float32)


def test_a_full_queue_refuses_with_429_and_retry_after():
    served = version(1)
    blocked = type(served)(served.name, 1, served.classes, served.image_size, served.sha256, BlockedModel())

    async def main():
        batcher = MicroBatcher(2, 0.0, max_queue=4)
        await batcher.start()
        first = asyncio.ensure_future(batcher.predict(blocked, images(1, 2)))  # taken by the model
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.predict(blocked, images(i, i))) for i in (3, 4)]
        await asyncio.sleep(0)
        with pytest.raises(RequestError) as refused:
            await batcher.predict(blocked, images(5))
        with pytest.raises(RequestError) as too_big:
            await batcher.predict(blocked, images(*range(5)))
        blocked.model.release.set()
        answers = await asyncio.gather(first, *queued)
        await batcher.stop()
        return refused.value, too_big.value, answers

    refused, too_big, answers = run(main())
    assert refused.status == 429 and refused.headers == {"Retry-After": "1"}
    assert "--max-queue 4" in str(refused)
    assert too_big.status == 413 and [len(answer) for answer in answers] == [2, 2, 2]


def test_a_batcher_that_died_fails_waiting_requests_and_refuses_new_ones():
    async def main():
        batcher = MicroBatcher(4, 0.0)

        async def broken():
            raise RuntimeError("a bug outside the model call")

        batcher._collect = broken  # the loop's own code fails, outside the model call's try
        await batcher.start()
        with pytest.raises(RequestError) as waiting:
            await asyncio.wait_for(batcher.predict(version(1), images(1)), 5)
        assert not batcher.running
        with pytest.raises(RequestError) as new:
            await batcher.predict(version(1), images(2))
        return waiting.value, new.value

    waiting, new = run(main())
    assert waiting.status == new.status == 503 and "micro-batcher stopped" in str(new)


class FailingModel:
    def predict_on_batch(self, pixels):
        raise ValueError("the model broke on this batch")


def app_client(state):
    """An HTTP client on the app over `state`, its batcher started as the server's lifespan does."""
    import httpx

    from transferflow.serving.app import create_app

    transport = httpx.ASGITransport(app=create_app(state), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://serve")


def state_with(model=None, **settings):
    from transferflow.serving.app import ServerState, ServeSettings

    state = ServerState("m", ServeSettings(**settings))
    if model is not None:
        served = version(1)
        state.slot.swap(type(served)(served.name, 1, served.classes, served.image_size, served.sha256, model))
    return state


PIXELS = {"instances": np.zeros((1, 2, 2, 3)).tolist()}


def test_a_model_error_is_a_500_and_the_server_answers_the_next_request():
    async def main():
        state = state_with(FailingModel())
        await state.batcher.start()
        async with app_client(state) as http:
            failed = await http.post("/v1/models/m:predict", json=PIXELS)
            state.slot.swap(version(2))  # a working version: the batcher is still alive
            answered = await http.post("/v1/models/m:predict", json=PIXELS)
            metrics = (await http.get("/metrics")).text
        await state.batcher.stop()
        return failed, answered, metrics

    failed, answered, metrics = run(main())
    assert failed.status_code == 500 and "internal error (ValueError)" in failed.json()["error"]
    assert answered.status_code == 200
    counted = 'transferflow_serve_errors_total{endpoint="/v1/models/{name}:predict",kind="internal"} 1.0'
    assert counted in metrics


def test_before_a_version_is_loaded_requests_and_readiness_get_503():
    async def main():
        state = state_with()
        await state.batcher.start()
        async with app_client(state) as http:
            answers = (await http.post("/v1/models/m:predict", json=PIXELS), await http.get("/readyz"),
                       await http.get("/healthz"))
        await state.batcher.stop()
        return answers

    predict, ready, alive = run(main())
    assert predict.status_code == 503
    assert "still loading; retry once /readyz answers 200" in predict.json()["error"]
    assert ready.status_code == 503 and ready.json() == {"status": "loading", "model": "m"}
    assert alive.status_code == 200


def test_requests_beyond_max_inflight_get_429_before_their_body_is_read():
    async def main():
        model = BlockedModel()
        state = state_with(model, max_inflight=2)
        await state.batcher.start()
        async with app_client(state) as http:
            busy = [asyncio.ensure_future(http.post("/v1/models/m:predict", json=PIXELS))
                    for _ in range(2)]
            await asyncio.sleep(0.2)
            refused = await http.post("/v1/models/m:classify", content=b"x" * 100)
            status = await http.get("/v1/models/m")  # not a model request: never refused
            model.release.set()
            answered = await asyncio.gather(*busy)
        await state.batcher.stop()
        return refused, status, answered

    refused, status, answered = run(main())
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "--max-inflight 2" in refused.json()["error"]
    assert status.status_code == 200 and [a.status_code for a in answered] == [200, 200]


def test_a_dead_batcher_fails_readiness():
    async def main():
        state = state_with(FailingModel())
        await state.batcher.start()
        await state.batcher.stop()  # as if its task had ended
        async with app_client(state) as http:
            return await http.get("/readyz"), await http.post("/v1/models/m:predict", json=PIXELS)

    ready, predict = run(main())
    assert ready.status_code == 503 and ready.json()["status"] == "broken"
    assert predict.status_code == 503 and "micro-batcher stopped" in predict.json()["error"]
