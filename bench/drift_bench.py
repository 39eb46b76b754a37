"""Drift detection on real photos: false alarms without a shift, detection with one.

Data: ../shared/datasets/sign-language-digits (2,062 photos, 10 classes). 30% of each class is
held out as production traffic (seeded) and never trained on; `transferflow train` trains on the
rest with real pretrained VGG16 weights (../shared/tools/pretrained_vgg16.py) and its defaults, on
a local SeaweedFS this bench starts, and registers `signs` with its reference (test and val).

Traffic kinds, each made from the held-out photos and sent as JPEG: none (the photos as they are),
inverted (colours), blurred (Gaussian, radius 3 px at 100 px), rotated (90 degrees), and unrelated
(crops of the two photos scikit-learn ships: a temple and a flower).

(a) Through the real server: `transferflow serve signs@production --monitor-window-requests 200`
    gets 200 requests of each kind in turn (4 clients), so each kind fills one window; then
    SIGTERM, and `transferflow monitor signs@production --json` judges the windows written.
(b) Many windows, built from the same model's real outputs on every held-out photo (the served
    model with its feature view, exactly what the server records), sampled without replacement
    per window, summarised and read back as the server and the monitor do, and compared with the
    stored reference: the false-alarm rate without a shift (goal <= 5% at the default level) and the
    detection rate per shift and window size (goal: 100% at 200 requests).

    .venv/bin/python bench/drift_bench.py [--null-windows 100] [--windows 20] [--sizes 25,50,100,200]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSFERFLOW_SHARED", ROOT.parent / "shared"))
DATASET = SHARED / "datasets" / "sign-language-digits" / "images"
WEIGHTS_TOOL = SHARED / "tools" / "pretrained_vgg16.py"
WEIGHTS = ROOT / ".local" / "drift" / "vgg16-pretrained.weights.h5"
NAME, HELD_OUT, SERVED_WINDOW = "signs", 0.3, 200
KINDS = ("none", "inverted", "blurred", "rotated", "unrelated")


def split_photos(work: Path, seed: int) -> tuple[Path, list[Path]]:
    """A training folder (links to 70% of each class) and the held-out photos."""
    rng, train, held = random.Random(seed), work / "train", []
    for folder in sorted(p for p in DATASET.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.JPG"))
        rng.shuffle(files)
        cut = int(len(files) * HELD_OUT)
        held += files[:cut]
        (train / folder.name).mkdir(parents=True)
        for path in files[cut:]:
            (train / folder.name / path.name).symlink_to(path)
    rng.shuffle(held)  # traffic in a random order: the first 200 must not be classes 0-3 only
    return train, held


def jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def traffic(held: list[Path], seed: int) -> dict[str, list[bytes]]:
    """Every kind of traffic, as the JPEG bodies clients would send."""
    from PIL import Image, ImageFilter, ImageOps
    from sklearn.datasets import load_sample_images

    photos = [Image.open(path).convert("RGB") for path in held]
    kinds = {"none": [jpeg(p) for p in photos],
             "inverted": [jpeg(ImageOps.invert(p)) for p in photos],
             "blurred": [jpeg(p.filter(ImageFilter.GaussianBlur(3))) for p in photos],
             "rotated": [jpeg(p.rotate(90, expand=True)) for p in photos]}
    rng, scenes, crops = np.random.default_rng(seed), load_sample_images().images, []
    for _ in photos:
        scene = scenes[rng.integers(len(scenes))]
        side = int(rng.integers(100, 400))
        top, left = rng.integers(0, scene.shape[0] - side), rng.integers(0, scene.shape[1] - side)
        crops.append(jpeg(Image.fromarray(scene[top:top + side, left:left + side])))
    kinds["unrelated"] = crops
    return kinds


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def train(folder: Path, work: Path) -> float:
    started = time.monotonic()
    env = {**os.environ, "PREFECT_HOME": str(work / "prefect"), "PREFECT_API_URL": ""}
    run([sys.executable, "-m", "transferflow.cli", "train", "--dataset", str(folder), "--weights",
         str(WEIGHTS), "--model-name", NAME], env=env)
    return time.monotonic() - started


def through_the_server(work: Path, kinds: dict[str, list[bytes]]) -> list[dict]:
    """(a): one window of SERVED_WINDOW requests per kind, then SIGTERM, then `transferflow monitor`."""
    import http.client

    from transferflow.devstack.s3server import free_ports

    port = free_ports(1)[0]
    log = work / "serve.log"
    command = [sys.executable, "-m", "transferflow.cli", "serve", f"{NAME}@production", "--port", str(port),
               "--monitor-window-requests", str(SERVED_WINDOW)]
    with open(log, "wb") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env={**os.environ, "TRANSFERFLOW_REPLICA_ID": "bench"})
    wait_ready(port, server, log)
    try:
        for kind in KINDS:
            bodies = kinds[kind][:SERVED_WINDOW]

            def client(part: list[bytes]) -> None:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                for body in part:
                    connection.request("POST", f"/v1/models/{NAME}:classify", body=body,
                                       headers={"Content-Type": "image/jpeg"})
                    response = connection.getresponse()
                    response.read()
                    assert response.status == 200, response.status

            threads = [threading.Thread(target=client, args=(bodies[i::4],)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        server.terminate()
        server.wait(timeout=120)
    shown = run([sys.executable, "-m", "transferflow.cli", "monitor", f"{NAME}@production", "--since", "all",
                 "--json"])
    return json.loads(shown.stdout)["windows"]


def wait_ready(port: int, server: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit(f"the server was not ready in {timeout} s")


def outputs(kinds: dict[str, list[bytes]]) -> tuple[dict, int]:
    """(kind -> (probabilities, features)) of the served model on every image, decoded as served."""
    from transferflow.data.decode import decode_image_bytes
    from transferflow.monitoring.features import split, with_features
    from transferflow.registry import Registry
    from transferflow.training.model import load_model

    _, version = Registry().resolve(f"{NAME}@production")
    model = load_model(f"{NAME}:{version}")
    viewer, classes = with_features(model), model.output_shape[-1]
    size = model.input_shape[1]
    found = {}
    for kind, bodies in kinds.items():
        pixels = np.stack([decode_image_bytes(body, size) for body in bodies]).astype(np.float32)
        found[kind] = split(np.asarray(viewer.predict(pixels, batch_size=64, verbose=0)), classes)
    return found, version


def detection(reference, answers, size: int, windows: int, seed: int) -> tuple[int, int]:
    """(windows with drift, windows tested) over `windows` random windows of `size` images."""
    from transferflow.monitoring.drift import compare
    from transferflow.monitoring.sketch import Sketch, from_document, projection, to_document

    probabilities, features = answers
    rng, fired = np.random.default_rng(seed), 0
    for index in range(windows):
        chosen = rng.choice(len(probabilities), size, replace=False)
        sketch = Sketch(reference.classes, projection(features.shape[1]), seed=index)
        for row in chosen:  # one image per request, as the served traffic above
            sketch.add(probabilities[row:row + 1], features[row:row + 1], [("jpeg", 100)])
        verdict = compare(reference, from_document(to_document(sketch)), seed=index)
        fired += bool(verdict.drift)
    return fired, windows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--null-windows", type=int, default=100, help="windows without a shift per size")
    parser.add_argument("--windows", type=int, default=20, help="windows per shift and size")
    parser.add_argument("--sizes", default="25,50,100,200", help="requests per window")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(ROOT))
    if not WEIGHTS.exists():
        WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
        run([sys.executable, str(WEIGHTS_TOOL), str(WEIGHTS)])
    from transferflow.devstack import s3server

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = s3server.start(work / "s3")
        os.environ.update({**store.env(), "TRANSFERFLOW_BUCKET": "drift-bench",
                           "TRANSFERFLOW_CACHE_DIR": str(work / "cache")})
        os.environ.pop("TRANSFERFLOW_SERVE_TOKEN", None)
        try:
            bench(work, args)
        finally:
            s3server.stop_process(store.process)


def bench(work: Path, args) -> None:
    from transferflow import storage
    from transferflow.monitoring.drift import DEFAULT_ALPHA
    from transferflow.monitoring.reference import load_reference

    storage.ensure_bucket("drift-bench")
    folder, held = split_photos(work, args.seed)
    kinds = traffic(held, args.seed)
    seconds = train(folder, work)
    served = through_the_server(work, kinds)
    answers, version = outputs(kinds)
    reference = load_reference(NAME, version, compute=False)
    sizes = [int(size) for size in args.sizes.split(",")]
    trained = sum(1 for _ in folder.rglob("*.JPG"))
    print(f"Sign Language Digits: trained on {trained} photos in {seconds:.0f} s ({NAME}:{version}); "
          f"{len(held)} held-out photos are the traffic; reference: {reference.images} test and val "
          f"images; alpha {DEFAULT_ALPHA} per window (Holm over 3 tests); {os.cpu_count()} CPUs\n")
    print(f"(a) through `transferflow serve`, one window of {SERVED_WINDOW} requests per kind:\n")
    print("| traffic | requests | drift | class_mix p | confidence p | features p |")
    print("|---|---:|---|---:|---:|---:|")
    for kind, window in zip(KINDS, served, strict=False):
        p = {t["name"]: t["p_adjusted"] for t in window["verdict"]["tests"]}
        print(f"| {kind} | {window['requests']} | {window['drift']} | {p.get('class_mix', 0):.2g} | "
              f"{p.get('confidence', 0):.2g} | {p.get('features', 0):.2g} |")
    print(f"\n(b1) no shift: false alarms over {args.null_windows} windows per size (goal <= 5%):\n")
    print("| requests per window | windows | false alarms | rate |")
    print("|---:|---:|---:|---:|")
    for size in sizes:
        fired, total = detection(reference, answers["none"], size, args.null_windows, args.seed + size)
        print(f"| {size} | {total} | {fired} | {fired / total:.1%} |")
    print(f"\n(b2) detection rate over {args.windows} windows per shift and size (goal: 100% at 200):\n")
    print("| shift | " + " | ".join(f"{size} requests" for size in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for kind in KINDS[1:]:
        rates = [detection(reference, answers[kind], size, args.windows, args.seed + size) for size in sizes]
        print(f"| {kind} | " + " | ".join(f"{fired / total:.0%}" for fired, total in rates) + " |")


if __name__ == "__main__":
    main()
