"""`transferflow serve` as users run it: a real server process, real SeaweedFS, real HTTP.

One server for the module (its start-up, TensorFlow's import and the first load, is the costly
part), serving `tiny@production` with a token, a 1 MiB body limit and a 1 megapixel limit so
that the limits can be hit with small requests. Versions 1 and 2 are small convolutional
classifiers with different random weights, so which one answered shows in the probabilities.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from tests.integration.test_cli import run_cli
from transferflow import storage
from transferflow.registry import ModelVersion, Registry
from transferflow.registry.documents import TrainingRecord

NAME, SIZE, CLASSES = "tiny", 32, ["circle", "square", "triangle"]
TOKEN = secrets.token_urlsafe(24)
POLL_SECONDS = 1.0
STALE_AFTER_S = 3.0
READY_TIMEOUT_S = 180


def tiny_classifier(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def register(seed: int) -> int:
    from transferflow.training.model import save_to

    uri = f"s3://{storage.bucket_name()}/staging/{NAME}-{seed}.keras"
    digest, size = save_to(tiny_classifier(seed), uri)
    record = TrainingRecord.model_validate({"classes": CLASSES, "image_size": SIZE})
    return Registry().register(NAME, uri, digest, size, record, f"run-{seed}").version


@pytest.fixture(scope="module")
def served_bucket(s3_server):
    """A bucket for the module, holding tiny:1 (production) and tiny:2."""
    with pytest.MonkeyPatch.context() as patch:
        name = f"serve-{uuid.uuid4().hex[:10]}"
        patch.setenv("TRANSFERFLOW_BUCKET", name)
        storage.ensure_bucket(name)
        assert (register(1), register(2)) == (1, 2)
        Registry().promote(NAME, 1, "production", reason="set up by the test")
        yield name
        storage.delete_prefix(name, "")
        storage.client().delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def server(served_bucket, tmp_path_factory):
    """`transferflow serve tiny@production` on a free port; yields (base URL, its log file)."""
    from transferflow.devstack.s3server import free_ports

    port = free_ports(1)[0]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "transferflow.cli", "serve", f"{NAME}@production", "--port", str(port),
               "--poll-seconds", str(POLL_SECONDS), "--max-body-mb", "1", "--max-megapixels", "1",
               "--stale-after-s", str(STALE_AFTER_S)]
    env = {**os.environ, "TRANSFERFLOW_SERVE_TOKEN": TOKEN}
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_ready(url: str, process: subprocess.Popen, log) -> None:
    import httpx

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited: {log.read_text()[-3000:]}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready after {READY_TIMEOUT_S} s: {log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def client(server):
    import httpx

    url, _ = server
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 32 px PNG and a 300x200 JPEG (decoded at reduced DCT scale, as in training)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / "small.png")
    photo = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(photo).save(folder / "photo.jpg", quality=90)
    return folder / "small.png", folder / "photo.jpg"


def png_bytes(height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_classify_answers_what_transferflow_predict_answers(client, images):
    png, jpeg = images
    files = [("image", (path.name, path.read_bytes(), "application/octet-stream")) for path in images]
    answer = client.post(f"/v1/models/{NAME}:classify", params={"top_k": 3}, files=files)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert (served["model"], served["version"]) == (NAME, 1)
    raw = client.post(f"/v1/models/{NAME}:classify", content=png.read_bytes(),
                      headers=PNG)
    assert raw.status_code == 200
    alone, batched = raw.json()["predictions"][0]["top"], served["predictions"][0]["top"]
    assert [t["class"] for t in alone] == [t["class"] for t in batched]  # the last bits differ by batch size
    np.testing.assert_allclose([t["probability"] for t in alone], [t["probability"] for t in batched],
                               atol=1e-6)

    expected = run_cli("predict", f"{NAME}@production", str(png), str(jpeg), "--top-k", "3", "--json")
    assert expected.returncode == 0, expected.stderr[-2000:]
    for got, want in zip(served["predictions"], json.loads(expected.stdout)["predictions"], strict=True):
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        np.testing.assert_allclose([t["probability"] for t in got["top"]],
                                   [t["probability"] for t in want["top"]], atol=1e-5)


def test_tf_serving_predict_and_status_answer_as_tf_serving_does(client):
    from transferflow.training.model import load_model

    pixels = np.random.default_rng(3).integers(0, 256, (3, SIZE, SIZE, 3))
    answer = client.post(f"/v1/models/{NAME}:predict", json={"instances": pixels.tolist()})
    assert answer.status_code == 200, answer.text
    expected = load_model(f"{NAME}:1").predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose(answer.json()["predictions"], expected, atol=1e-5)
    named = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"image": pixels[0].tolist()}]})
    np.testing.assert_allclose(named.json()["predictions"], expected[:1], atol=1e-5)
    status = client.get(f"/v1/models/{NAME}").json()
    assert status == {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                                "status": {"error_code": "OK", "error_message": ""}}]}


PNG = {"Content-Type": "image/png"}
NO_FILES = b'--b1\r\nContent-Disposition: form-data; name="note"\r\n\r\nno file\r\n--b1--\r\n'
BAD_REQUESTS = [  # (what, path suffix, request keywords, expected status, words the message must have)
    ("not an image", ":classify", {"content": b"hello, not an image", "headers": PNG}, 415,
     "not a JPEG, PNG"),
    ("truncated image", ":classify", {"content": png_bytes(32, 32)[:60], "headers": PNG}, 400,
     "truncated or corrupt"),
    ("too many pixels", ":classify", {"content": png_bytes(1100, 1000), "headers": PNG}, 413,
     "1.1 megapixels"),
    ("body over the limit", ":classify", {"content": bytes(1_200_000), "headers": PNG}, 413, "--max-body-mb"),
    ("chunked body over the limit", ":classify", {"content": [bytes(400_000)] * 3, "headers": PNG}, 413,
     "--max-body-mb"),
    ("wrong content type", ":classify", {"content": b"{}", "headers": {"Content-Type": "application/json"}},
     415, "Content-Type"),
    ("multipart without files", ":classify",
     {"content": NO_FILES, "headers": {"Content-Type": "multipart/form-data; boundary=b1"}}, 400, "no files"),
    ("top_k below 1", ":classify?top_k=0", {"content": png_bytes(32, 32), "headers": PNG}, 400, "top_k"),
    ("top_k not a number", ":classify?top_k=many", {"content": b"", "headers": PNG}, 400, "top_k"),
    ("not JSON", ":predict", {"content": b"instances=1"}, 400, "not JSON"),
    ("wrong shape", ":predict", {"json": {"instances": np.zeros((1, 16, 16, 3)).tolist()}}, 400,
     "[32, 32, 3]"),
    ("ragged", ":predict", {"json": {"instances": [[[0, 0, 0]], [[0, 0]]]}}, 400, "ragged"),
    ("wrong dtype", ":predict", {"json": {"instances": [[["a"] * 3] * SIZE] * SIZE}}, 400, "numbers"),
    ("out of range", ":predict", {"json": {"instances": np.full((1, SIZE, SIZE, 3), 300).tolist()}}, 400,
     "0-255"),
    ("no instances", ":predict", {"json": {"rows": []}}, 400, "instances"),
]


@pytest.mark.parametrize("what, suffix, request_args, status, words", BAD_REQUESTS,
                         ids=[case[0] for case in BAD_REQUESTS])
def test_bad_input_gets_its_4xx_and_the_server_stays_up(client, what, suffix, request_args, status, words):
    answer = client.post(f"/v1/models/{NAME}{suffix}", **request_args)
    assert answer.status_code == status, (what, answer.text)
    assert words in answer.json()["error"], answer.json()
    assert client.get("/healthz").status_code == 200


def test_an_unknown_model_is_a_404_naming_the_served_one(client):
    answers = client.post("/v1/models/other:predict", json={"instances": []}), client.get("/v1/models/other")
    for answer in answers:
        assert answer.status_code == 404 and f"serves '{NAME}'" in answer.json()["error"]


def test_the_token_is_required_except_on_the_probes(server):
    import httpx

    url, _ = server
    for path in ("/metrics", f"/v1/models/{NAME}"):
        assert httpx.get(url + path).status_code == 401
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer " + "x" * len(TOKEN)})
        assert wrong.status_code == 401 and "bearer token" in wrong.json()["error"]
        assert wrong.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.post(f"{url}/v1/models/{NAME}:classify", content=b"x").status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200


def test_metrics_parse_as_prometheus_text(client, images):
    from prometheus_client.parser import text_string_to_metric_families

    for _ in range(3):
        client.post(f"/v1/models/{NAME}:classify", content=images[0].read_bytes(),
                    headers=PNG)
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in families.values() for sample in family.samples}
    classify = "/v1/models/{name}:classify"
    assert samples[("transferflow_serve_requests_total", (("endpoint", classify), ("status", "200")))] >= 3
    assert samples[("transferflow_serve_request_seconds_count", (("endpoint", classify),))] >= 3
    assert samples[("transferflow_serve_batch_size_count", ())] >= 3
    assert samples[("transferflow_serve_model_version", (("model", NAME),))] in (1, 2)
    internal = [key for key in samples if ("kind", "internal") in key[1]]
    assert not internal, "a request failed inside the server"


def test_promote_and_rollback_swap_versions_under_load_without_a_failed_request(client, server):
    _, log = server
    load = ClientLoad(client, threads=4)
    with load:
        load.wait_for_version(1)
        Registry().promote(NAME, 2, "production", reason="test: promote under load")
        promoted = time.monotonic()
        load.wait_for_version(2)
        swap_seconds = time.monotonic() - promoted
        Registry().rollback(NAME, "production", reason="test: roll back under load")
        load.wait_for_version(1)
    assert load.failures == [], load.failures[:5]
    assert load.answered > 20
    text = log.read_text()
    assert "tiny@production moved: version 1 -> 2" in text and "version 2 -> 1" in text, text[-2000:]
    print(f"version 2 answered {swap_seconds:.1f} s after the promote (poll interval {POLL_SECONDS} s)")


class ClientLoad:
    """Threads sending :classify requests in a loop, recording each answer's version or failure."""

    def __init__(self, http, threads: int):
        self.http, self.count = http, threads
        self.versions: list[int] = []
        self.failures: list[str] = []
        self.stopped = threading.Event()
        self.body = png_bytes(SIZE, SIZE)

    @property
    def answered(self) -> int:
        return len(self.versions)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.send) for _ in range(self.count)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def send(self) -> None:
        while not self.stopped.is_set():
            try:
                answer = self.http.post(f"/v1/models/{NAME}:classify", content=self.body,
                                        headers=PNG)
                if answer.status_code == 200:
                    self.versions.append(answer.json()["version"])
                else:
                    self.failures.append(f"{answer.status_code} {answer.text}")
            except Exception as exc:  # a dropped connection is a failed request too
                self.failures.append(repr(exc))

    def wait_for_version(self, version: int, timeout: float = 90.0) -> None:
        """Until a request answered after this call was answered by `version` (a bound, not a
        performance assertion: a swap takes one poll plus a download and a warm-up)."""
        start, deadline = len(self.versions), time.monotonic() + timeout
        while time.monotonic() < deadline and version not in self.versions[start:]:
            assert not self.failures, self.failures[:5]
            time.sleep(0.05)
        assert version in self.versions[start:], f"version {version} never answered in {timeout} s"


def metric_samples(client) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(client.get("/metrics").text)
            for sample in family.samples}


def wait_for(condition, what: str, timeout: float = 60.0):
    """Poll until condition() returns something true (a bound for a test, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := condition():
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} not seen in {timeout} s")


def test_a_corrupt_version_is_retried_shown_and_counted_while_the_old_one_answers(client, server):
    url, log = server
    import httpx

    corrupt = register(3)
    bucket = storage.bucket_name()
    storage.put_bytes(bucket, ModelVersion(NAME, corrupt, bucket).artifact_key, b"not a model",
                      "application/octet-stream")  # altered after registration: its sha256 fails
    load = ClientLoad(client, threads=2)
    with load:
        load.wait_for_version(1)
        Registry().promote(NAME, corrupt, "production", reason="test: a version that cannot load")
        failure = ("transferflow_swap_failures_total", (("model", NAME), ("version", "3")))
        wait_for(lambda: metric_samples(client).get(failure, 0) >= 2, "a retried swap failure")
        states = client.get(f"/v1/models/{NAME}").json()["model_version_status"]
        ready = wait_for(lambda: (answer := httpx.get(f"{url}/readyz")).status_code == 503 and answer,
                         f"/readyz failing after --stale-after-s {STALE_AFTER_S}")
        Registry().rollback(NAME, "production", reason="test: back from the corrupt version")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "/readyz ready after the rollback")
    assert load.failures == [] and set(load.versions) == {1}  # version 1 answered throughout
    assert states[-1] == {"version": "1", "state": "AVAILABLE",
                          "status": {"error_code": "OK", "error_message": ""}}
    assert states[0]["version"] == "3" and states[0]["state"] in ("END", "LOADING")
    body = ready.json()
    assert body["status"] == "stale" and body["alias_version"] == 3 and body["version"] == 1
    assert "integrity check failed for tiny:3" in body["swap_error"] and body["swap_attempts"] >= 2
    text = log.read_text()
    assert "tiny@production points at version 3, which cannot be served (attempt 2)" in text, text[-2000:]
    assert client.get(f"/v1/models/{NAME}").json()["model_version_status"] == states[-1:]


def test_a_short_token_is_refused_before_anything_starts(served_bucket):
    refused = run_cli("serve", f"{NAME}@production", "--port", "1", env={"TRANSFERFLOW_SERVE_TOKEN": "short"})
    assert refused.returncode != 0
    assert "TRANSFERFLOW_SERVE_TOKEN is set but shorter than 16 characters" in refused.stderr


def test_a_real_server_beyond_max_inflight_answers_429_with_retry_after_and_stays_up(served_bucket, tmp_path):
    """Overload, end to end: two requests whose bodies arrive late hold both of `--max-inflight 2`'s
    slots; a third is refused at once with 429 and Retry-After, before its body is read; once the
    slow ones are answered, the server takes requests again and is still ready."""
    import httpx

    from transferflow.devstack.s3server import free_ports

    port, log = free_ports(1)[0], tmp_path / "serve.log"
    command = [sys.executable, "-m", "transferflow.cli", "serve", f"{NAME}@production", "--port", str(port),
               "--max-inflight", "2", "--no-monitor"]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    body = json.dumps({"instances": np.zeros((1, SIZE, SIZE, 3), int).tolist()}).encode()
    head = (f"POST /v1/models/{NAME}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode()
    slow = []
    try:
        wait_ready(url, process, log)
        for _ in range(2):  # the headers and the first bytes of the body; the rest only later
            connection = socket.create_connection(("127.0.0.1", port), timeout=60)
            connection.sendall(head + body[:10])
            slow.append(connection)
        deadline = time.monotonic() + 30
        while True:  # until both slow requests hold their slots (the server reads them in its own time)
            refused = httpx.post(f"{url}/v1/models/{NAME}:predict", content=body, timeout=30)
            if refused.status_code == 429 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "1" and "--max-inflight 2" in refused.json()["error"]
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200  # probes are never refused
        for connection in slow:
            connection.sendall(body[10:])
        answers = [connection.makefile("rb").readline() for connection in slow]
        assert all(line.startswith(b"HTTP/1.1 200") for line in answers), answers
        again = httpx.post(f"{url}/v1/models/{NAME}:predict", content=body, timeout=30)
        assert again.status_code == 200 and len(again.json()["predictions"]) == 1
    finally:
        for connection in slow:
            connection.close()
        process.terminate()
        process.wait(timeout=30)
