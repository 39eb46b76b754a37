"""Monitoring and feedback as users run them: a real `transferflow serve` process with recording and
low-confidence capture on, real SeaweedFS, the monitor flow on a Prefect test server, and the
`transferflow monitor` command.

The model is a tiny random classifier registered as trained on a generated dataset (3 classes x 40
images, 32 px), so its reference is computed on demand from that dataset's test and val splits.
Traffic: 40 fresh images of the same generator (in distribution), then the same images with their
colours inverted (shifted); each phase fills one window (--monitor-window-requests 40).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from tests.integration.test_cli import run_cli
from tests.integration.test_monitoring_store import register_on
from tests.integration.test_serve_http import wait_ready
from transferflow import storage
from transferflow.registry import Registry

pytestmark = pytest.mark.slow

NAME, WINDOW, CAPTURE_BELOW = "monit", 40, 0.39  # the model answers ~0.41 for class_0, ~0.36 for others
SENT: list[float] = []  # every answer's confidence, in order: the open window holds the last len % WINDOW


@pytest.fixture(scope="module")
def monitored(s3_server, tmp_path_factory):
    """A bucket holding monit:1 (production), trained, as its metadata says, on `shapes`."""
    from transferflow.data import PrepareOptions, prepare_dataset
    from transferflow.devstack.samples import write_dataset

    with pytest.MonkeyPatch.context() as patch:
        bucket = f"monit-{uuid.uuid4().hex[:10]}"
        patch.setenv("TRANSFERFLOW_BUCKET", bucket)
        storage.ensure_bucket(bucket)
        root = write_dataset(tmp_path_factory.mktemp("data") / "shapes", classes=3, per_class=40,
                             formats=("png",))
        dataset = prepare_dataset(str(root), PrepareOptions(32, 0.1, 0.1, 0))
        register_on(NAME, 5, dataset)
        Registry().promote(NAME, 1, "production", reason="set up by the test")
        yield bucket, root, dataset
        storage.delete_prefix(bucket, "")
        storage.client().delete_bucket(Bucket=bucket)


@pytest.fixture(scope="module")
def server(monitored, tmp_path_factory):
    from transferflow.devstack.s3server import free_ports

    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "transferflow.cli", "serve", f"{NAME}@production", "--port", str(port),
               "--monitor-window-requests", str(WINDOW), "--capture-below-confidence", str(CAPTURE_BELOW)]
    env = {**os.environ, "TRANSFERFLOW_REPLICA_ID": "replica-1"}
    env.pop("TRANSFERFLOW_SERVE_TOKEN", None)
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:  # not waited for here: it starts up while the Prefect test server does (see `ready`)
        yield url, process, log
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def ready(server) -> str:
    url, process, log = server
    wait_ready(url, process, log)
    return url


def traffic(inverted: bool) -> list[bytes]:
    """40 PNGs from the training data's generator (another seed), colours inverted or not."""
    from PIL import Image

    from transferflow.devstack.samples import sample_image

    rng = np.random.default_rng(11)
    images = [sample_image(i % 3, 32, rng) for i in range(WINDOW)]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(255 - image if inverted else image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


def send(url: str, bodies: list[bytes]) -> list[float]:
    """Each image as its own :classify request; the top probability of each answer."""
    import httpx

    confidences = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for body in bodies:
            answer = http.post(f"/v1/models/{NAME}:classify", content=body,
                               headers={"Content-Type": "image/png"})
            assert answer.status_code == 200, answer.text
            confidences.append(answer.json()["predictions"][0]["top"][0]["probability"])
    SENT.extend(confidences)
    return confidences


def windows_written(bucket: str, count: int, timeout: float = 60) -> list[dict]:
    from transferflow.monitoring.layout import windows_prefix

    deadline = time.monotonic() + timeout
    while True:
        keys = sorted(e["Key"] for e in storage.list_keys(bucket, windows_prefix(NAME, 1)))
        if len(keys) >= count or time.monotonic() > deadline:
            return [storage.get_json(bucket, key)[0] for key in keys]
        time.sleep(0.3)


def drift_events(since: float) -> list[dict]:
    """transferflow.model.drift events the Prefect test server has stored (they arrive shortly after)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        answer = client.request("POST", "/events/filter", json={
            "filter": {"event": {"name": ["transferflow.model.drift"]}, "occurred": {
                "since": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(since - 5))}}})
        return answer.json()["events"]


def wait_for_events(since: float, count: int, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        events = drift_events(since)
        if len(events) >= count or time.monotonic() > deadline:
            return events
        time.sleep(1)


def test_windows_are_written_and_the_flow_raises_drift_only_on_shifted_traffic(monitored, server,
                                                                              prefect_server):
    from transferflow_flows.monitor import monitor

    bucket, _, _ = monitored
    url = ready(server)
    started = time.time()
    send(url, traffic(inverted=False))
    [first] = windows_written(bucket, 1)
    assert (first["requests"], first["closed_by"], first["replica"]) == (WINDOW, "requests", "replica-1")
    assert first["inputs"]["formats"] == {"png": WINDOW}
    assert len(first["sample"]["projection"]["sha256"]) == 16
    assert monitor(model=NAME) == {"drifted": {}}
    assert wait_for_events(started, 1, timeout=10) == []
    assert Registry().reference_entry(NAME, 1) is not None  # computed on demand, listed with the version

    send(url, traffic(inverted=True))
    assert len(windows_written(bucket, 2)) == 2
    assert monitor(model=NAME) == {"drifted": {NAME: [1]}}
    [event] = wait_for_events(started, 1)
    assert event["resource"]["prefect.resource.id"] == f"transferflow.model.{NAME}"
    payload = event["payload"]
    assert payload["reference"] == f"{NAME}:1" and payload["requests"] == WINDOW and payload["fired"]
    assert all(test["p_adjusted"] is not None for test in payload["tests"].values())
    assert monitor(model=NAME) == {"drifted": {}}  # judged windows are not judged again

    shown = run_cli("monitor", f"{NAME}@production", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    windows = json.loads(shown.stdout)["windows"]
    assert [w["drift"] for w in windows] == [False, True]
    assert {t["name"] for t in windows[1]["verdict"]["tests"]} == {"class_mix", "confidence", "features"}

    shown = run_cli("monitor", f"{NAME}@production", "--since", "all")  # the table users read
    assert shown.returncode == 0, shown.stderr[-3000:]
    table = shown.stdout
    assert "2 windows" in table and table.count("DRIFT") == 1 and "class_mix" in table


def test_low_confidence_inputs_are_captured_with_sidecars_and_feed_a_retrain(monitored, server):
    from transferflow.data import PrepareOptions, load_prepared, prepare_dataset
    from transferflow.data.decode import decode_image_bytes
    from transferflow.monitoring.layout import labeled_prefix, unlabeled_prefix

    bucket, root, dataset = monitored
    url = ready(server)
    time.sleep(2)  # captures of the first test's traffic are uploaded by now; the rest are this test's
    before = {e["Key"] for e in storage.list_keys(bucket, unlabeled_prefix(NAME))}
    bodies = traffic(inverted=False)[:12]
    confidences = send(url, bodies)
    expected = sum(c < CAPTURE_BELOW for c in confidences)
    assert 0 < expected < len(bodies), f"the test needs some confidences below {CAPTURE_BELOW}: {confidences}"
    deadline = time.monotonic() + 30
    while True:
        new = sorted(e["Key"] for e in storage.list_keys(bucket, unlabeled_prefix(NAME))
                     if e["Key"] not in before)
        if len(new) >= 2 * expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    images, sidecars = [k for k in new if k.endswith(".png")], [k for k in new if k.endswith(".json")]
    assert len(images) == len(sidecars) == expected
    for key in sidecars:
        sidecar = storage.get_json(bucket, key)[0]
        assert sidecar["confidence"] < CAPTURE_BELOW and sidecar["reason"] == "low_confidence"
        assert (sidecar["model"], sidecar["version"]) == (NAME, 1)
        assert sidecar["prediction"] in dataset.class_names and key.replace(".json", ".png") in images
        assert key.split("/")[3] == time.strftime("%Y-%m-%d", time.gmtime())

    # A person labels them (here: as the model predicted), and a retrain's dataset takes them in.
    labelled = []
    for key in sidecars:
        sidecar = storage.get_json(bucket, key)[0]
        data = storage.client().get_object(Bucket=bucket, Key=key.replace(".json", ".png"))["Body"].read()
        storage.put_bytes(bucket, f"{labeled_prefix(NAME)}{sidecar['prediction']}/{sidecar['image']}", data,
                          "image/png")
        labelled.append(decode_image_bytes(data, 32))
    options = PrepareOptions(32, 0.1, 0.1, 0, extra_data=f"s3://{bucket}/{labeled_prefix(NAME)}")
    grown = prepare_dataset(str(root), options)
    total = sum(sum(per_class.values()) for per_class in grown.counts.values())
    assert total == sum(sum(per_class.values()) for per_class in dataset.counts.values()) + expected
    assert grown.extra["images"] == expected and grown.fingerprint != dataset.fingerprint
    splits = load_prepared(grown).splits
    for image in labelled:
        homes = [name for name, (x, _) in splits.items() if (x == image).all(axis=(1, 2, 3)).any()]
        assert len(homes) == 1, homes
    assert prepare_dataset(str(root), options).uri == grown.uri  # the same images, the same splits


def test_sigterm_writes_the_open_window(monitored, server):
    bucket, _, _ = monitored
    url, process, log = ready(server), server[1], server[2]
    written = len(windows_written(bucket, 0, timeout=0))
    send(url, traffic(inverted=False)[:5])
    process.terminate()  # SIGTERM: uvicorn's graceful shutdown runs the lifespan's stop
    assert process.wait(timeout=60) in (0, -15), log.read_text()[-3000:]  # uvicorn re-raises SIGTERM
    last = windows_written(bucket, written + 1, timeout=0)[-1]
    assert (last["closed_by"], last["requests"]) == ("shutdown", len(SENT) % WINDOW), last
