"""SandboxSpawner: each JupyterHub single-user server in its own sandboxd sandbox.

A policy class over sandboxd's HTTP API (no host access of its own, so the Hub may run
unprivileged): every call goes through tornado's AsyncHTTPClient with the Hub's *service* token.

One ``start()``:

1. the user: ``GET/POST /api/users`` (sandboxd user named from ``user_template``) and a token of
   that user's own (``POST /api/users/{name}/tokens``, kept in the spawner state), which the
   server uses as its gateway token, so every kernel belongs to that user and nobody else;
2. volumes: ``PUT /api/users/{name}/volumes/{volume}`` for each of ``volumes`` (the persistent
   home is one: made on first spawn, kept across stops, removed by ``delete_forever`` only when
   ``delete_volumes_on_delete`` is on);
3. network: ``GET /api/networks/{network}?user=`` (made if missing) gives the gateway, the
   address at which the sandbox reaches the Hub's API and sandboxd (the server profile's
   ``host_ports``; kernels' profiles have none, so kernels reach nothing of the Hub);
4. the image (an OCI image, not the built-in ``host``): chosen from ``allowed_images`` (the
   user's option, as in DockerSpawner) or ``image``; if sandboxd lacks it, pulled with the
   user's own token (``POST /api/images/pull``, streamed), each "pulling image: 3 of 5 layers"
   a progress event; refused if the profile may not pull;
5. the sandbox: ``POST /api/sandboxes`` running ``jupyterhub-singleuser`` with ``get_env()``,
   ``--gateway-url`` = sandboxd (with ``kernels_in_own_sandboxes``), the limits and the volumes;
6. the server answering: ``GET {address}:{port}{base_url}api`` until it answers.

``progress()`` yields one event per step as it happens. The Hub and the proxy reach the server
at the sandbox's own address on the user's bridge (returned as ``(ip, port)``).
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import time
from typing import Any
from urllib.parse import quote, urlparse

from jupyterhub.spawner import Spawner
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from traitlets import Bool, Dict, Float, Integer, List, Unicode, Union, default

from ..errors import Reason
from ..models.types import USER_PATTERN

try:  # jupyterhub >= 5.0 (reason= label since 6.0)
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs
    from tornado.web import HTTPError as _HTTPError

    class SpawnException(_HTTPError):  # type: ignore[no-redef]
        def __init__(
            self, message: str, *, reason: str = "", status_code: int = 500, **_: Any
        ) -> None:
            super().__init__(status_code, log_message=message, reason=reason)
            self.jupyterhub_message = message


try:
    from jupyterhub.traitlets import ByteSpecification
except ImportError:  # pragma: no cover
    ByteSpecification = Integer

#: sandboxd error reasons → the SpawnException reason label (a Prometheus label in the Hub);
#: keyed by ``Reason`` members, so a reason the daemon does not have cannot be listed here
REASONS: dict[str, str] = {
    Reason.MAX_SANDBOXES: "quota",
    Reason.MAX_KERNELS: "quota",
    Reason.MEMORY_QUOTA: "quota",
    Reason.CPU_QUOTA: "quota",
    Reason.PROFILE_LIMIT: "quota",
    Reason.MAX_NETWORKS: "quota",
    Reason.UNKNOWN_IMAGE: "image",
    Reason.IMAGE_NOT_FOUND: "image",
    Reason.IMAGE_BROKEN: "image",
    Reason.BAD_REFERENCE: "image",
    Reason.BAD_IMAGE: "image",
    Reason.BAD_IMAGE_USER: "image",
    Reason.NO_COMMAND: "image",
    Reason.IDMAP_UNSUPPORTED: "image",
    Reason.PULL_DENIED: "image",
    Reason.REGISTRY_DENIED: "image",
    Reason.REGISTRY_AUTH: "image",
    Reason.REGISTRY_UNREACHABLE: "image",
    Reason.REGISTRY_TIMEOUT: "image",
    Reason.POOL_OVERLAP: "network",
    Reason.SUBNETS_EXHAUSTED: "network",
    Reason.ADDRESSES_EXHAUSTED: "network",
    Reason.UNKNOWN_NETWORK: "network",
    Reason.BAD_NETWORK: "network",
    Reason.BAD_NETWORK_NAME: "network",
    Reason.NO_MACVLAN: "network",
    Reason.PORT_TAKEN: "network",
    Reason.NETWORK: "network",
    Reason.BAD_VOLUME: "volume",
    Reason.BAD_VOLUME_TARGET: "volume",
    Reason.VOLUME_DENIED: "volume",
    Reason.HOST_PATH_DENIED: "volume",
    Reason.UNKNOWN_VOLUME: "volume",
    Reason.VOLUME_IN_USE: "volume",
    Reason.NO_VOLUME_ROOT: "volume",
    Reason.UNKNOWN_PROFILE: "profile",
    Reason.PROFILE_DENIED: "profile",
}
SANDBOX_NAME = re.compile(r"[^a-zA-Z0-9_.-]")
USER_NAME = re.compile(USER_PATTERN.strip("^$"))


class SandboxdError(Exception):
    """A JSON error answer of sandboxd: ``{"reason", "message"}`` with its HTTP status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class SandboxSpawner(Spawner):
    """Run each single-user server (and, through sandboxd's gateway, each kernel) sandboxed."""

    # --- where sandboxd is ----------------------------------------------------------------------

    sandboxd_url = Unicode(
        "http://127.0.0.1:8890",
        help="""URL of sandboxd's API as the Hub reaches it. Default http://127.0.0.1:8890
        (sandboxd's default listen address). Env SANDBOXD_URL overrides the default.""",
    ).tag(config=True)

    @default("sandboxd_url")
    def _default_url(self) -> str:
        import os

        return os.environ.get("SANDBOXD_URL", "http://127.0.0.1:8890")

    sandboxd_token = Unicode(
        help="""A sandboxd *service* token (``sandboxctl user add hub --service`` or
        ``POST /api/users {"name": "hub", "service": true}`` as admin). A service token may
        create plain users, their tokens, volumes and sandboxes, never admins. Default: env
        SANDBOXD_TOKEN, else the contents of ``sandboxd_token_file``.""",
    ).tag(config=True)

    sandboxd_token_file = Unicode(
        "",
        help="Path of a file holding the service token (read once, stripped). Default: none.",
    ).tag(config=True)

    @default("sandboxd_token")
    def _default_token(self) -> str:
        import os

        if os.environ.get("SANDBOXD_TOKEN"):
            return os.environ["SANDBOXD_TOKEN"]
        if self.sandboxd_token_file:
            with open(self.sandboxd_token_file) as fh:
                return fh.read().strip()
        return ""

    sandboxd_connect_url = Unicode(
        "",
        help="""URL at which the *server sandbox* reaches sandboxd (its gateway API). Default
        "": http://<the network's gateway>:<port of sandboxd_url>; sandboxd must then listen on
        that address (e.g. listen = "0.0.0.0:8890") and the server profile must list the port in
        its host_ports.""",
    ).tag(config=True)

    hub_connect_host = Unicode(
        "",
        help="""Host at which the server sandbox reaches the Hub's API. Default "": the gateway
        of the user's network, so the Hub must bind there (c.JupyterHub.hub_bind_url =
        "http://0.0.0.0:8081") and the server profile must list the Hub's port in its
        host_ports. The port and path are the Hub's own.""",
    ).tag(config=True)

    request_timeout = Float(
        120.0,
        help="Seconds one sandboxd API request may take (a sandbox start is ~0.1-2 s).",
    ).tag(config=True)

    pull_timeout = Float(
        1800.0,
        help="Seconds an image pull on first spawn may take (a big image over a slow link).",
    ).tag(config=True)

    # --- what the sandbox is --------------------------------------------------------------------

    user_template = Unicode(
        "{username}",
        help="""sandboxd user name of a Hub user; ``{username}`` is the Hub's name, lower-cased.
        Must give [a-z0-9][a-z0-9_.-]{0,31}, else the spawn fails with reason "user".""",
    ).tag(config=True)

    name_template = Unicode(
        "jupyter-{username}{servername_suffix}",
        help="""Sandbox name (unique per sandboxd user); ``{servername_suffix}`` is "" for the
        default server and "-<servername>" for a named one, ``{username}`` is available.""",
    ).tag(config=True)

    profile = Unicode(
        "default",
        help="""sandboxd profile of the server sandbox (limits' defaults and maxima, network,
        egress, host_ports). Use one with network = "bridge" and host_ports that include the
        Hub's and sandboxd's ports.""",
    ).tag(config=True)

    image = Unicode(
        "",
        help="""sandboxd image of the server sandbox: "host" (the built-in image, which must
        hold jupyterhub at the path of ``cmd``) or an OCI image (``quay.io/jupyter/base-notebook:
        latest``; its Env, WorkingDir, Entrypoint and user apply, ``image_cmd`` runs); "" = the
        profile's image. Missing images are pulled on first spawn if the profile allows it.""",
    ).tag(config=True)

    allowed_images = Union(
        [List(Unicode()), Dict(Unicode())],
        default_value=[],
        help="""Images users may pick, as in DockerSpawner: a list of images, or {display name:
        image}. With more than one, the spawn form offers a choice (user option ``image``); a
        user option naming anything else is refused with a clear reason. Empty: ``image``
        only, and a user option is refused.""",
    ).tag(config=True)

    image_cmd = List(
        Unicode(),
        ["jupyterhub-singleuser"],
        help="""Command of a server started from an OCI image (found on the image's PATH), before
        ``get_args()``; ``cmd`` is for the built-in host image. [] = the image's own Cmd.""",
    ).tag(config=True)

    network = Unicode(
        "bridge",
        help="""Network of the server sandbox: "bridge" (the user's default network) or the name
        of one of the user's networks (made on first spawn if missing). It must be a bridge
        network: the Hub and the proxy reach the server at its address on it.""",
    ).tag(config=True)

    volumes = Dict(
        {"home": "/home/jovyan"},
        help="""Per-user persistent volumes: {volume name: container path[":ro"]}. sandboxd
        keeps each at <volume root>/<user>/<volume name>, owned by the user's tenant uid, made
        on first spawn and kept across stops. ``{username}`` and ``{servername}`` are replaced in
        names, e.g. {"home-{servername}": "/home/jovyan"} for one home per named server. Kernels
        get the home only if their kernelspec binds the same volume (metadata.sandboxd.volumes
        = ["home:/home/jovyan"]).""",
    ).tag(config=True)

    host_volumes = List(
        Unicode(),
        help="""Extra binds "HOST:CONTAINER[:ro]" (``{username}``/``{servername}`` replaced).
        sandboxd binds a host path only for an admin token: set ``sandboxd_token`` to an admin
        token to use this. Default: none.""",
    ).tag(config=True)

    delete_volumes_on_delete = Bool(
        False,
        help="""Whether delete_forever() (the admin deleting a user or a named server) removes
        the volumes (for a named server only those whose name holds {servername}). Default
        False: the data stays on the host.""",
    ).tag(config=True)

    kernels_in_own_sandboxes = Bool(
        True,
        help="""Start the server with --gateway-url pointing at sandboxd, the user's own sandboxd
        token and KERNEL_USERNAME, so each kernel is a sandbox of its own (own memory limit: an
        OOM kills that kernel only). False: kernels run inside the server's sandbox.""",
    ).tag(config=True)

    kernel_mem_limit = ByteSpecification(
        None,
        allow_none=True,
        help="""Memory limit of each kernel sandbox (KERNEL_MEMORY); None = mem_limit, and
        without either the kernelspec profile's default. K/M/G/T suffixes.""",
    ).tag(config=True)

    disk_limit = ByteSpecification(
        None,
        allow_none=True,
        help="Size cap of the server sandbox's writable root (not the volumes); None = profile.",
    ).tag(config=True)

    pids_limit = Integer(
        0,
        help="Maximum number of processes in the server sandbox; 0 = the profile's default.",
    ).tag(config=True)

    stop_grace = Float(
        5.0,
        help="Seconds between SIGTERM and killing the sandbox's cgroup on stop().",
    ).tag(config=True)

    server_ready_interval = Float(
        0.1,
        help="Seconds between two probes of the starting server (progress 'answering').",
    ).tag(config=True)

    @default("ip")
    def _default_ip(self) -> str:
        return "0.0.0.0"  # inside the sandbox's own netns: its eth0 (and its own loopback)

    @default("port")
    def _default_port(self) -> int:
        return 8888

    @default("options_form")
    def _options_form_default(self) -> str:
        choices = self._allowed()
        if len(choices) <= 1:
            return ""
        options = "".join(
            f'<option value="{html.escape(label)}">{html.escape(label)}</option>'
            for label in choices
        )
        return (
            '<label for="image">Image</label>'
            f'<select class="form-control" name="image" required autofocus>{options}</select>'
        )

    def options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        return {"image": (formdata.get("image") or [""])[0]}

    def _allowed(self) -> dict[str, str]:
        """{what a user may name: the image it means}."""
        raw = self.allowed_images
        if isinstance(raw, dict):
            return {str(k): str(v) for k, v in raw.items()}
        return {str(i): str(i) for i in raw}

    def _chosen_image(self) -> str:
        """The server's image: the user's option if allowed (DockerSpawner's rule), else
        ``image``; "" leaves it to the profile."""
        wanted = (self.user_options or {}).get("image")
        if not wanted:
            return self.image
        allowed = self._allowed()
        if isinstance(wanted, str) and wanted in allowed.values():
            return wanted
        if not isinstance(wanted, str) or wanted not in allowed:
            names = ", ".join(sorted(allowed)) or "none (only the configured image)"
            raise SpawnException(
                f"image {str(wanted)[:200]!r} is not allowed; allowed images: {names}",
                reason="image",
                status_code=400,
            )
        return allowed[wanted]

    # --- state --------------------------------------------------------------------------------

    sandbox_id = Unicode("")
    sandboxd_user = Unicode("")
    user_token = Unicode("")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._events: list[dict[str, Any]] = []
        self._new_event = asyncio.Event()
        self._starting = False
        for key in ("mem_guarantee", "cpu_guarantee"):
            if getattr(self, key, None):
                self.log.warning(
                    "SandboxSpawner: %s is ignored (sandboxd has no guarantees yet;"
                    " limits are enforced)",
                    key,
                )

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.sandbox_id = state.get("sandbox_id", "")
        self.sandboxd_user = state.get("sandboxd_user", "")
        self.user_token = state.get("user_token", "")

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        if self.sandbox_id:
            state["sandbox_id"] = self.sandbox_id
        if self.sandboxd_user:
            state["sandboxd_user"] = self.sandboxd_user
        if self.user_token:
            state["user_token"] = self.user_token  # reused across stops, so tokens do not pile up
        return state

    def clear_state(self) -> None:
        super().clear_state()
        self.sandbox_id = ""

    # --- sandboxd API -------------------------------------------------------------------------

    async def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        missing_ok: bool = False,
    ) -> Any:
        """One call; returns the decoded JSON (None for 204, or 404 with ``missing_ok``)."""
        req = HTTPRequest(
            self.sandboxd_url.rstrip("/") + path,
            method=method,
            headers={
                "Authorization": f"token {token or self.sandboxd_token}",
                "Content-Type": "application/json",
            },
            body=None
            if body is None and method in ("GET", "DELETE")
            else json.dumps(body if body is not None else {}),
            request_timeout=self.request_timeout,
            connect_timeout=10,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as exc:
            if exc.code == 404 and missing_ok:
                return None
            reason, message = "http-error", str(exc)
            if exc.response is not None and exc.response.body:
                try:
                    data = json.loads(exc.response.body)
                    reason, message = data.get("reason", reason), data.get("message", message)
                except ValueError:
                    pass
            raise SandboxdError(exc.code, reason, message) from None
        return json.loads(resp.body) if resp.body else None

    def _spawn_error(self, exc: SandboxdError, what: str) -> Exception:
        reason = REASONS.get(exc.reason, "sandboxd")
        message = f"sandboxd refused to {what}: {exc.message} ({exc.reason})"
        status = exc.status if 400 <= exc.status < 500 else 500
        return SpawnException(
            message, reason=reason, status_code=status, log_message=f"{self._log_name}: {message}"
        )

    # --- names ----------------------------------------------------------------------------------

    def _fmt(self, template: str) -> str:
        return template.format(
            username=self.user.name,
            servername=self.name or "",
            servername_suffix=f"-{self.name}" if self.name else "",
        )

    def _sandboxd_user(self) -> str:
        name = self.user_template.format(username=self.user.name.lower())
        if not USER_NAME.fullmatch(name):
            raise SpawnException(
                f"user name {name!r} cannot be a sandboxd user ([a-z0-9][a-z0-9_.-]{{0,31}})",
                reason="user",
            )
        return name

    def _sandbox_name(self) -> str:
        return SANDBOX_NAME.sub("-", self._fmt(self.name_template))[:63].strip("-.") or "jupyter"

    def _volume_names(self, for_delete: bool = False) -> dict[str, str]:
        out = {}
        for template, ctr in self.volumes.items():
            if for_delete and self.name and "{servername}" not in template:
                continue  # shared by the user's other servers
            out[SANDBOX_NAME.sub("-", self._fmt(template))] = ctr
        return out

    # --- progress -----------------------------------------------------------------------------

    def _step(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._events.append({"progress": progress, "message": message})
        self._new_event.set()

    async def progress(self) -> Any:
        """One event per step of ``start()``, each as soon as it happened."""
        seen = 0
        while True:
            while seen < len(self._events):
                yield self._events[seen]
                seen += 1
            if not self._starting:
                return
            self._new_event.clear()
            await self._new_event.wait()

    # --- the Spawner contract -----------------------------------------------------------------

    async def start(self) -> tuple[str, int]:
        self._events = []
        self._starting = True
        try:
            return await self._start()
        finally:
            self._starting = False
            self._new_event.set()

    async def _ensure_user(self) -> str:
        name = self._sandboxd_user()
        if await self.api("GET", f"/api/users/{name}", missing_ok=True) is None:
            try:
                await self.api("POST", "/api/users", {"name": name})
            except SandboxdError as exc:
                if exc.reason != "user-exists":
                    raise
        if self.user_token and self.sandboxd_user == name:
            who = await self._whoami(self.user_token)
            if who == name:
                return name
        body = await self.api("POST", f"/api/users/{name}/tokens")
        self.user_token, self.sandboxd_user = body["token"], name
        return name

    async def _whoami(self, token: str) -> str | None:
        try:
            return (await self.api("GET", "/api/whoami", token=token))["name"]
        except SandboxdError:
            return None

    async def _network(self, user: str) -> dict[str, Any]:
        name = "default" if self.network == "bridge" else self.network
        path = f"/api/networks/{quote(name)}?user={quote(user)}"
        net = await self.api("GET", path, missing_ok=True)
        if net is None:
            net = await self.api("POST", "/api/networks", {"name": name, "user": user})
        return net

    def _server_env(self, gateway: str, oci: bool = False) -> dict[str, str]:
        env = self.get_env()
        if oci:  # the Hub's own PATH and friends mean nothing in an image (DockerSpawner too)
            for key in self.env_keep:
                if key not in self.environment:
                    env.pop(key, None)
        hub = urlparse(self.hub.api_url)
        hub_url = f"{hub.scheme}://{self.hub_connect_host or gateway}:{hub.port or 80}{hub.path}"
        env["JUPYTERHUB_API_URL"] = hub_url
        env["JUPYTERHUB_ACTIVITY_URL"] = (
            f"{hub_url.rstrip('/')}/users/{quote(self.user.name)}/activity"
        )
        if not oci:  # an image brings its own (Env, and HOME from its user)
            env.setdefault("HOME", "/home/jovyan")
            env.setdefault("SHELL", "/bin/bash")
            env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if self.kernels_in_own_sandboxes:
            env["JUPYTER_GATEWAY_AUTH_TOKEN"] = self.user_token
            env["KERNEL_USERNAME"] = self.sandboxd_user
            kmem = self.kernel_mem_limit or self.mem_limit
            if kmem:
                env["KERNEL_MEMORY"] = str(int(kmem))
            if self.cpu_limit:
                env["KERNEL_CPUS"] = str(self.cpu_limit)
        return {k: str(v) for k, v in env.items()}

    def _gateway_url(self, gateway: str) -> str:
        if self.sandboxd_connect_url:
            return self.sandboxd_connect_url
        own = urlparse(self.sandboxd_url)
        return f"{own.scheme}://{gateway}:{own.port or 80}"

    async def _start(self) -> tuple[str, int]:
        try:
            user = await self._ensure_user()
            self._step(10, f"sandboxd user {user} ready")
            binds = []
            for vol, ctr in self._volume_names().items():
                await self.api("PUT", f"/api/users/{user}/volumes/{quote(vol)}")
                path, _, mode = ctr.partition(":")
                binds.append(f"{vol}:{path}" + (f":{mode}" if mode else ""))
            binds += [self._fmt(v) for v in self.host_volumes]
            self._step(20, f"volumes ready ({', '.join(self._volume_names()) or 'none'})")
            net = await self._network(user)
            gateway = net["gateway"]
            self._step(40, f"network {net['name']} ready ({net['subnet']}, via {gateway})")
            image = self._chosen_image()
            oci = bool(image) and image != "host"
            base_cmd = list(self.cmd)
            if oci:
                model = await self._ensure_image(image)
                base_cmd = list(self.image_cmd) or list(
                    (model.get("config") or {}).get("Cmd") or []
                )
        except SandboxdError as exc:
            raise self._spawn_error(exc, "prepare the server") from None

        cmd = [*base_cmd, *self.get_args()]
        if self.kernels_in_own_sandboxes:
            cmd.append(f"--gateway-url={self._gateway_url(gateway)}")
        body: dict[str, Any] = {
            "user": user,
            "name": self._sandbox_name(),
            "command": cmd,
            "env": self._server_env(gateway, oci),
            "volumes": binds,
            "profile": self.profile,
            "network": self.network,
            "labels": {
                "jupyterhub.user": self.user.name,
                "jupyterhub.server": self.name or "",
                "managed-by": "jupyterhub",
            },
        }
        if image:
            body["image"] = image
        if self.mem_limit:
            body["memory"] = int(self.mem_limit)
        if self.cpu_limit:
            body["cpus"] = float(self.cpu_limit)
        if self.disk_limit:
            body["disk"] = int(self.disk_limit)
        if self.pids_limit:
            body["pids"] = self.pids_limit
        rec = await self._create(body)
        self.sandbox_id = rec["id"]
        address = (rec.get("network_settings") or {}).get("address")
        if not address:
            await self._remove()
            raise SpawnException(
                f"server sandbox has no address on network {self.network}", reason="network"
            )
        self._step(60, f"sandbox {rec['id'][:12]} started at {address} (image {rec['image']})")
        await self._wait_answering(address)
        self._step(90, f"server answering at {address}:{self.port}")
        await asyncio.sleep(0.01)  # let progress listeners take the last step before "ready"
        return address, self.port

    async def _ensure_image(self, image: str) -> dict[str, Any]:
        """The image's model; pulled first (as the user, under the server's profile) if sandboxd
        lacks it, each layer count a progress event. A refusal is the spawn's failure."""
        path = f"/api/images/{quote(image, safe='')}"
        model = await self.api("GET", path, token=self.user_token, missing_ok=True)
        if model is not None:
            return model
        self._step(45, f"pulling image {image}")
        buffer = b""
        result: dict[str, Any] = {}

        def on_chunk(chunk: bytes) -> None:
            nonlocal buffer
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("status") == "progress":
                    share = event["done"] / max(1, event["total"])
                    self._step(45 + int(14 * share), event["message"])
                elif event.get("status") in ("done", "error"):
                    result.update(event)

        req = HTTPRequest(
            self.sandboxd_url.rstrip("/") + "/api/images/pull",
            method="POST",
            headers={
                "Authorization": f"token {self.user_token}",
                "Content-Type": "application/json",
            },
            body=json.dumps({"ref": image, "profile": self.profile, "stream": True}),
            streaming_callback=on_chunk,
            request_timeout=self.pull_timeout,
            connect_timeout=10,
        )
        try:
            await AsyncHTTPClient().fetch(req)
        except HTTPClientError as exc:
            reason, message = "http-error", str(exc)
            if buffer:  # a refusal before the stream: the body went to the callback
                try:
                    data = json.loads(buffer)
                    reason, message = data.get("reason", reason), data.get("message", message)
                except ValueError:
                    pass
            raise SandboxdError(exc.code, reason, message) from None
        if result.get("status") != "done":
            raise SandboxdError(
                500, result.get("reason", "pull"), result.get("message", "the pull ended early")
            )
        return result["image"]

    async def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(2):
            try:
                return await self.api("POST", "/api/sandboxes", body)
            except SandboxdError as exc:
                if exc.reason == "name-taken" and attempt == 0:
                    # a leftover of an earlier run (the Hub lost its state): replace it, looked
                    # up by name in the user's own namespace (the user's token)
                    self.log.warning(
                        "%s: removing stale sandbox %s/%s",
                        self._log_name,
                        body["user"],
                        body["name"],
                    )
                    await self.api(
                        "DELETE",
                        f"/api/sandboxes/{quote(body['name'])}?force=1",
                        token=self.user_token,
                        missing_ok=True,
                    )
                    continue
                raise self._spawn_error(exc, "start the server") from None
        raise SpawnException("could not replace a stale server sandbox", reason="sandboxd")

    async def _wait_answering(self, address: str) -> None:
        base = self.server.base_url if self.server else "/"
        url = f"http://{address}:{self.port}{base}api"
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.start_timeout
        probes = 0
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, request_timeout=2, connect_timeout=1)
                return
            except HTTPClientError as exc:
                if exc.code not in (599,):  # answered (even 4xx/5xx): it is up
                    return
            except OSError:
                pass
            probes += 1
            if probes % 10 == 0 and await self.poll() is not None:
                raise await self._exited_error()
            await asyncio.sleep(self.server_ready_interval)
        raise SpawnException(
            f"the server did not answer within {self.start_timeout} s", reason="timeout"
        )

    async def _exited_error(self) -> Exception:
        sid = self.sandbox_id
        rec = await self.api("GET", f"/api/sandboxes/{sid}", missing_ok=True) or {}
        logs = await self.api("GET", f"/api/sandboxes/{sid}/logs?tail=5", missing_ok=True) or {}
        tail = (logs.get("stderr") or "").strip().splitlines()[-3:]
        await self._remove()
        why = rec.get("reason") or "exited"
        return SpawnException(
            f"the server sandbox ended while starting: {why}"
            + (f" — {' / '.join(tail)}" if tail else ""),
            reason="oom" if rec.get("oom_killed") else "server-exited",
            status_code=500,
        )

    async def poll(self) -> int | None:
        if not self.sandbox_id:
            return None if self._starting else 0
        try:
            rec = await self.api("GET", f"/api/sandboxes/{self.sandbox_id}", missing_ok=True)
        except (SandboxdError, OSError) as exc:
            # sandboxd restarting: its sandboxes keep running, so do not report the server dead
            self.log.warning("%s: cannot poll sandboxd: %s", self._log_name, exc)
            return None
        if rec is None:
            return 0
        if rec["state"] in ("running", "created"):
            return None
        return rec["exit_code"] if rec["exit_code"] is not None else 1

    async def _remove(self) -> None:
        if self.sandbox_id:
            await self.api("DELETE", f"/api/sandboxes/{self.sandbox_id}?force=1", missing_ok=True)

    async def stop(self, now: bool = False) -> None:
        if not self.sandbox_id:
            return
        try:
            await self.api(
                "POST",
                f"/api/sandboxes/{self.sandbox_id}/stop",
                {"timeout": 0 if now else self.stop_grace},
                missing_ok=True,
            )
            await self._remove()
        except SandboxdError as exc:
            raise self._spawn_error(exc, "stop the server") from None
        self.sandbox_id = ""

    async def delete_forever(self) -> None:
        """Remove the persistent volumes when the admin enabled delete_volumes_on_delete."""
        if not self.delete_volumes_on_delete:
            return
        user = self._sandboxd_user()
        for vol in self._volume_names(for_delete=True):
            await self.api("DELETE", f"/api/users/{user}/volumes/{quote(vol)}", missing_ok=True)
            self.log.info("%s: removed volume %s/%s", self._log_name, user, vol)
        if not self.name:
            self.user_token = ""
