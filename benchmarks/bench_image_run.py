"""Running the Python kernel image (4 layers, from ``make test-images``) against the built-in
``host`` image, in the same run:

1. Cold start of a kernel: ``POST /api/kernels`` → first ``kernel_info_reply`` on its
   WebSocket, for a kernelspec naming the image and one naming ``host``, alternating, RUNS each
   (after one warm-up of each). The image's kernel pays the idmapped layer mounts (a user
   namespace + one mount per layer in the launcher child) and runs Debian's Python 3.11.
2. The runtime's share of that: ``POST /api/sandboxes`` of ``/bin/true`` until it runs, for
   the image and for ``host``, alternating (the rest of a kernel's start is its Python: the
   image has Debian's 3.11 with ipykernel 6.17, ``host`` the project's venv).
   And the other share: the time to ``import ipykernel.kernelapp`` measured inside a sandbox of
   each (the interpreters differ, not the runtime).
3. Disk used by N (20) sandboxes of the image, each having written a small file: the store's
   layer directories (one copy, whatever N) plus each sandbox's upper layer (a tmpfs of its
   own), against what N unpacked copies would take.

The image is loaded from the cached OCI layout through ``/api/images/load`` (no registry
needed). Run as root: ``.venv/bin/python benchmarks/bench_image_run.py [--runs 10] [-n 20]``;
a daemon instance of its own in a netns of its own, everything removed at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid

import requests
import websocket
from harness import daemon

LAYOUT = os.path.join(
    os.environ.get("SANDBOXD_TEST_CACHE", "/var/cache/sandboxd-test"), "images", "python"
)
IMAGE = "bench.example/python:1"


def layout_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(LAYOUT, arcname=".")
    return buf.getvalue()


def kernelspec(ksdir: str, name: str, image: str) -> None:
    os.makedirs(os.path.join(ksdir, name))
    with open(os.path.join(ksdir, name, "kernel.json"), "w") as fh:
        json.dump(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": name,
                "language": "python",
                "metadata": {"sandboxd": {"profile": "default", "image": image}},
            },
            fh,
        )


def cold_start(url: str, token: str, name: str) -> float:
    """POST /api/kernels → the first kernel_info_reply; the kernel is removed after."""
    headers = {"Authorization": f"token {token}"}
    t0 = time.perf_counter()
    resp = requests.post(url + "/api/kernels", json={"name": name}, headers=headers, timeout=120)
    resp.raise_for_status()
    kid = resp.json()["id"]
    ws = websocket.create_connection(
        url.replace("http", "ws") + f"/api/kernels/{kid}/channels",
        header=[f"Authorization: token {token}"],
        timeout=120,
    )
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "kernel_info_request",
                    "username": "b",
                    "session": "b",
                    "date": "2026-01-01T00:00:00.000000Z",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {},
                "channel": "shell",
            }
        )
    )
    while True:
        got = json.loads(ws.recv())
        if got["parent_header"].get("msg_id") == msg_id and got["msg_type"] == "kernel_info_reply":
            break
    elapsed = time.perf_counter() - t0
    ws.close()
    requests.delete(url + f"/api/kernels/{kid}", headers=headers, timeout=60)
    return elapsed


def du(path: str) -> int:
    """Bytes of disk blocks under ``path`` (du -sB1; hard links counted once)."""
    out = subprocess.run(["du", "-sB1", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def tmpfs_used(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("-n", "--sandboxes", type=int, default=20)
    args = parser.parse_args()
    ksdir = tempfile.mkdtemp(prefix="sbxb-ks-")
    kernelspec(ksdir, "py-image", IMAGE)
    kernelspec(ksdir, "py-host", "host")
    config = f"""
kernelspec_dirs = ["{ksdir}"]
[profiles.default]
network = "none"
memory = "256m"
disk = "64m"
[quotas.default]
max_sandboxes = {args.sandboxes + 4}
max_kernels = 4
memory = "64g"
cpus = 64.0
"""
    try:
        with daemon(config) as d:
            http = requests.Session()
            http.headers["Authorization"] = f"token {d.token}"
            resp = http.post(
                d.url + f"/api/images/load?tag={IMAGE}", data=layout_tar(), timeout=600
            )
            resp.raise_for_status()
            image = resp.json()["images"][0]
            print(
                f"image {IMAGE}: {len(image['layers'])} layers, {mib(image['size'])} unpacked",
                flush=True,
            )

            cold_start(d.url, d.token, "py-host"), cold_start(d.url, d.token, "py-image")  # warm
            host, img = [], []
            for _ in range(args.runs):  # alternating, so machine noise hits both alike
                host.append(cold_start(d.url, d.token, "py-host"))
                img.append(cold_start(d.url, d.token, "py-image"))
            mh, mi = statistics.median(host), statistics.median(img)
            print(
                f"kernel cold start, POST -> kernel_info_reply, median of {args.runs}: "
                f"host {mh * 1000:.0f} ms, image {mi * 1000:.0f} ms, ratio {mi / mh:.3f} "
                f"(image min {min(img) * 1000:.0f} / max {max(img) * 1000:.0f} ms)",
                flush=True,
            )

            def create(image: str) -> float:
                t0 = time.perf_counter()
                resp = http.post(
                    d.url + "/api/sandboxes",
                    json={"image": image, "command": ["/bin/true"]},
                    timeout=120,
                )
                elapsed = time.perf_counter() - t0
                resp.raise_for_status()
                http.delete(d.url + f"/api/sandboxes/{resp.json()['id']}?force=1", timeout=60)
                return elapsed

            create("host"), create(IMAGE)
            host, img = [], []
            for _ in range(args.runs * 3):
                host.append(create("host"))
                img.append(create(IMAGE))
            mh, mi = statistics.median(host), statistics.median(img)
            print(
                f"sandbox create+start of /bin/true, median of {args.runs * 3}: host "
                f"{mh * 1000:.1f} ms, image {mi * 1000:.1f} ms, "
                f"image adds {(mi - mh) * 1000:.1f} ms",
                flush=True,
            )

            code = (
                "import time; t0 = time.perf_counter(); import ipykernel.kernelapp; "
                "print(time.perf_counter() - t0)"
            )

            def imports(image: str) -> float:
                resp = http.post(
                    d.url + "/api/sandboxes",
                    json={"image": image, "command": ["python3", "-c", code]},
                    timeout=120,
                )
                resp.raise_for_status()
                sid = resp.json()["id"]
                http.post(d.url + f"/api/sandboxes/{sid}/wait", timeout=120)
                out = http.get(d.url + f"/api/sandboxes/{sid}/logs", timeout=30).json()
                http.delete(d.url + f"/api/sandboxes/{sid}?force=1", timeout=60)
                return float(out["stdout"].split()[-1])

            imports("host"), imports(IMAGE)
            host, img = [], []
            for _ in range(args.runs):
                host.append(imports("host"))
                img.append(imports(IMAGE))
            mh, mi = statistics.median(host), statistics.median(img)
            print(
                f"import ipykernel.kernelapp inside the sandbox, median of {args.runs}: host "
                f"{mh * 1000:.0f} ms, image {mi * 1000:.0f} ms (the image's Python and ipykernel)",
                flush=True,
            )

            store = os.path.join(d.state, "s", "images", "layers")
            layers_before = du(store)
            sandboxes = []
            script = "head -c 100000 /dev/urandom > /home/jovyan/data; echo ok; exec sleep 600"
            t0 = time.perf_counter()
            for i in range(args.sandboxes):
                resp = http.post(
                    d.url + "/api/sandboxes",
                    json={"image": IMAGE, "name": f"s{i}", "command": ["sh", "-c", script]},
                    timeout=120,
                )
                resp.raise_for_status()
                sandboxes.append(resp.json())
            started = time.perf_counter() - t0
            for sb in sandboxes:
                for _ in range(200):
                    logs = http.get(d.url + f"/api/sandboxes/{sb['id']}/logs", timeout=30)
                    if "ok" in logs.json()["stdout"]:
                        break
                    time.sleep(0.05)
            uppers = [
                tmpfs_used(f"/proc/{sb['pid']}/root/run/sandboxd/{d.instance}/{sb['id']}/rw")
                for sb in sandboxes
            ]
            layers_after = du(store)
            layer_dirs = len(os.listdir(store))
            n = args.sandboxes
            total = layers_after + sum(uppers)
            print(
                f"{n} sandboxes of the image (started in {started:.1f} s): layers on disk "
                f"{mib(layers_after)} in {layer_dirs} directories (before: {mib(layers_before)}), "
                f"upper layers {mib(sum(uppers))} in all (median {mib(statistics.median(uppers))} "
                f"each, tmpfs); total {mib(total)} vs {mib(n * layers_after + sum(uppers))} "
                f"for {n} copies ({total / (n * layers_after + sum(uppers)):.3f})",
                flush=True,
            )
            for sb in sandboxes:
                http.delete(d.url + f"/api/sandboxes/{sb['id']}?force=1", timeout=60)
    finally:
        subprocess.run(["rm", "-rf", ksdir], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
