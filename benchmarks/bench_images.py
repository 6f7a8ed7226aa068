"""Pull and unpack time of the Python kernel image (4 layers, ~130 MB gzip, ~430 MB unpacked).

A ``docker-registry`` on the loopback of a network namespace of its own holds the image
(pushed from the fixture cache of ``make test-images``). Measured, median of RUNS, each into
an empty store:

1. ``ImageManager.pull``: manifest, config, download (verified), unpack in the worker (by fd,
   diff id checked), commit; split into download and unpack from the progress events;
2. baselines in the same run: ``skopeo copy docker://… oci:`` (download only) and
   ``tar -xzf`` of the same layer blobs with GNU tar (unpack only, no safety checks).

Run as root: ``.venv/bin/python benchmarks/bench_images.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import requests
from harness import enter_netns

from sandboxd.images.manager import ImageManager
from sandboxd.images.settings import parse_images

RUNS = 3
LAYOUT = os.path.join(os.environ.get("SANDBOXD_TEST_CACHE", "/var/cache/sandboxd-test"), "images")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = os.path.join(workdir, "config.yml")
    with open(config, "w") as fh:
        fh.write(
            "version: 0.1\nlog:\n  level: error\n"
            f"storage:\n  filesystem:\n    rootdirectory: {workdir}/data\n"
            f"http:\n  addr: 127.0.0.1:{port}\n"
        )
    proc = subprocess.Popen(
        ["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1)
            return proc, f"127.0.0.1:{port}"
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("docker-registry did not start")


def pull_once(host: str, state: str) -> dict[str, float]:
    settings = parse_images(
        {"allowed_registries": [host], "registries": {host: {"insecure": True}}}
    )
    marks: dict[str, float] = {}

    def on_event(event: dict) -> None:
        now = time.perf_counter()
        if event["status"] == "downloading":
            marks.setdefault("download", now)
        elif event["status"] == "extracting":
            marks["extract"] = now  # the last layer to start unpacking: the big one finishes last

    async def main() -> tuple[float, float, int]:
        manager = ImageManager(state, lambda: settings)
        try:
            t0 = time.perf_counter()
            await manager.pull(f"{host}/python:latest", on_event)
            end = time.perf_counter()
            return end - t0, end, manager.store.counts()["bytes"]
        finally:
            await manager.close()

    total, end, size = asyncio.run(main())
    return {"total": total, "unpack": end - marks.get("extract", end), "bytes": size}


def skopeo_download(host: str, dest: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false"]
        + [f"docker://{host}/python:latest", f"oci:{dest}:latest"],
        check=True,
    )
    return time.perf_counter() - t0


def tar_unpack(layout: str, dest: str) -> float:
    index = json.load(open(os.path.join(layout, "index.json")))
    digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.load(open(os.path.join(layout, "blobs/sha256", digest)))
    t0 = time.perf_counter()
    for layer in manifest["layers"]:
        blob = os.path.join(layout, "blobs/sha256", layer["digest"].split(":")[1])
        subprocess.run(["tar", "-xzf", blob, "-C", dest, "--numeric-owner"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    if not os.path.isdir(os.path.join(LAYOUT, "python")):
        raise SystemExit("no image fixtures: run `make test-images` first")
    netns = "sbxb" + secrets.token_hex(2) + "-img"
    work = tempfile.mkdtemp(prefix="sbx-bench-images-")
    enter_netns(netns)
    proc = None
    try:
        proc, host = start_registry(work)
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
            + [f"oci:{LAYOUT}/python:latest", f"docker://{host}/python:latest"],
            check=True,
        )
        pulls, downloads, untars = [], [], []
        for i in range(RUNS):
            state = os.path.join(work, f"state{i}")
            pulls.append(pull_once(host, state))
            size = pulls[-1]["bytes"]
            shutil.rmtree(state)
            dest = os.path.join(work, f"skopeo{i}")
            downloads.append(skopeo_download(host, dest))
            out = os.path.join(work, f"tar{i}")
            os.mkdir(out)
            untars.append(tar_unpack(dest, out))
            shutil.rmtree(dest)
            shutil.rmtree(out)
        total = statistics.median(p["total"] for p in pulls)
        unpack = statistics.median(p["unpack"] for p in pulls)
        base_dl, base_tar = statistics.median(downloads), statistics.median(untars)
        print(f"python image: 4 layers, {size / 1e6:.0f} MB unpacked; median of {RUNS}")
        print(f"  sandboxd pull (download + verify + unpack): {total:6.2f} s")
        print(f"    of which the last layer's unpack:          {unpack:6.2f} s")
        print(f"  skopeo copy (download only):                {base_dl:6.2f} s")
        print(f"  tar -xzf of the same blobs (unpack only):   {base_tar:6.2f} s")
        print(f"  pull / (skopeo + tar):                      {total / (base_dl + base_tar):6.2f}")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", netns], check=False)


if __name__ == "__main__":
    main()
