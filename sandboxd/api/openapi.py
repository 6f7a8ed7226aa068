"""The OpenAPI 3 document of the whole API, served at /api/openapi.json (no token needed)."""

from __future__ import annotations

import json
from typing import Any

from .. import __version__
from .base import BaseHandler

ERROR = {"$ref": "#/components/schemas/Error"}


def _op(
    summary: str,
    ok: str = "200",
    body: str | None = None,
    schema: Any = None,
    errors: tuple[str, ...] = ("401", "404"),
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        ok: {
            "description": "success",
            **({"content": {"application/json": {"schema": schema}}} if schema else {}),
        }
    }
    for code in errors:
        responses[code] = {
            "description": "error",
            "content": {"application/json": {"schema": ERROR}},
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": _ref(name)}


REF_PARAM = [
    {
        "name": "ref",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "sandbox id, unique id prefix or name",
    }
]
NAME_PARAM = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["reason", "message"],
        "properties": {"reason": {"type": "string"}, "message": {"type": "string"}},
    },
    "SandboxCreate": {
        "type": "object",
        "properties": {
            "command": {
                "type": "array",
                "items": {"type": "string"},
                "description": "argv; replaces an OCI image's Cmd (required for the host image)",
            },
            "name": {"type": "string"},
            "profile": {"type": "string"},
            "image": {
                "type": "string",
                "description": "host (built-in) or NAME[:TAG], NAME@DIGEST, an id: default the "
                "profile's; a missing image is pulled if the profile has allow_pull, else 404",
            },
            "entrypoint": {
                "type": "array",
                "items": {"type": "string"},
                "description": "replaces the image's Entrypoint and drops its Cmd ([] clears it)",
            },
            "cpus": {"type": "number", "exclusiveMinimum": 0},
            "memory": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "swap": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "disk": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "pids": {"type": "integer", "minimum": 8},
            "device_read_bps": {"type": "array", "items": {"type": "string"}},
            "device_write_bps": {"type": "array", "items": {"type": "string"}},
            "device_read_iops": {"type": "array", "items": {"type": "string"}},
            "device_write_iops": {"type": "array", "items": {"type": "string"}},
            "volumes": {"type": "array", "items": {"type": "string"}},
            "env": {
                "oneOf": [
                    {"type": "object", "additionalProperties": {"type": "string"}},
                    {"type": "array", "items": {"type": "string"}},
                ]
            },
            "workdir": {"type": "string"},
            "stdin": {"type": "boolean"},
            "auto_remove": {"type": "boolean"},
            "user": {"type": "string"},
            "network": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Sandbox": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "user": {"type": "string"},
            "kind": {"type": "string"},
            "state": {"type": "string", "enum": ["created", "running", "exited"]},
            "command": {"type": "array", "items": {"type": "string"}},
            "profile": {"type": "string"},
            "image": {"type": "string"},
            "image_id": {"type": "string", "nullable": True},
            "limits": {"type": "object"},
            "uid": {"type": "integer"},
            "pid": {"type": "integer", "nullable": True},
            "network": {"type": "string"},
            "volumes": {"type": "array", "items": {"type": "object"}},
            "created": {"type": "string"},
            "started": {"type": "string", "nullable": True},
            "finished": {"type": "string", "nullable": True},
            "exit_code": {"type": "integer", "nullable": True},
            "oom_killed": {"type": "boolean"},
            "reason": {"type": "string"},
            "labels": {"type": "object"},
        },
    },
    "LimitsUpdate": {
        "type": "object",
        "properties": {
            "cpus": {"type": "number", "exclusiveMinimum": 0},
            "memory": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "pids": {"type": "integer", "minimum": 8},
        },
    },
    "Exit": {
        "type": "object",
        "properties": {
            "exit_code": {"type": "integer", "nullable": True},
            "oom_killed": {"type": "boolean"},
            "reason": {"type": "string"},
        },
    },
    "Logs": {
        "type": "object",
        "properties": {
            "stdout": {"type": "string"},
            "stderr": {"type": "string"},
            "truncated": {"type": "boolean"},
        },
    },
    "Stats": {
        "type": "object",
        "properties": {
            key: {"type": "number"}
            for key in (
                "cpu_percent",
                "cpu_usage_seconds",
                "cpu_user_seconds",
                "cpu_system_seconds",
                "cpu_periods",
                "cpu_throttled_periods",
                "cpu_throttled_seconds",
                "memory_usage",
                "memory_peak",
                "memory_working_set",
                "memory_rss",
                "memory_cache",
                "memory_swap",
                "memory_limit",
                "memory_percent",
                "oom_kills",
                "pids_current",
                "pids_limit",
                "io_read_bytes",
                "io_write_bytes",
                "io_read_ops",
                "io_write_ops",
            )
        },
    },
    "UserCreate": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "admin": {"type": "boolean"},
            "service": {"type": "boolean"},
        },
    },
    "User": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "uid": {"type": "integer"},
            "admin": {"type": "boolean"},
            "service": {"type": "boolean"},
            "created": {"type": "number"},
            "token": {"type": "string", "description": "only in the answer to a create"},
        },
    },
    "Token": {"type": "object", "properties": {"token": {"type": "string"}}},
    "QuotaUpdate": {
        "type": "object",
        "properties": {
            "max_sandboxes": {"type": "integer", "minimum": 0},
            "memory": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "cpus": {"type": "number", "exclusiveMinimum": 0},
        },
    },
    "Quota": {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "quota": {"type": "object"},
            "usage": {"type": "object"},
            "source": {"type": "string", "enum": ["config", "api"]},
        },
    },
    "Status": {
        "type": "object",
        "properties": {
            "version": {"type": "string"},
            "instance": {"type": "string"},
            "cgroup_version": {"type": "integer"},
            "running": {"type": "integer"},
            "sandboxes": {"type": "integer"},
            "users": {"type": "integer"},
            "uptime_seconds": {"type": "number"},
        },
    },
}

PATHS: dict[str, Any] = {
    "/api/sandboxes": {
        "post": _op(
            "Create and start a sandbox",
            "201",
            "SandboxCreate",
            _ref("Sandbox"),
            ("400", "401", "403", "404", "409", "429", "500", "503"),
        ),
        "get": {
            **_op("List the caller's sandboxes", schema=_array("Sandbox"), errors=("401",)),
            "parameters": [{"name": "all", "in": "query", "schema": {"type": "string"}}],
        },
    },
    "/api/sandboxes/{ref}": {
        "parameters": REF_PARAM,
        "get": _op("Inspect a sandbox", schema=_ref("Sandbox")),
        "patch": _op(
            "Change cpus, memory or pids of a running sandbox",
            "200",
            "LimitsUpdate",
            _ref("Sandbox"),
            ("400", "401", "404", "409", "429"),
        ),
        "delete": _op(
            "Remove a sandbox (force=1 to kill a running one)", "204", errors=("401", "404", "409")
        ),
    },
    "/api/sandboxes/{ref}/stop": {
        "parameters": REF_PARAM,
        "post": _op("SIGTERM, grace period, then kill the cgroup", schema=_ref("Sandbox")),
    },
    "/api/sandboxes/{ref}/wait": {
        "parameters": REF_PARAM,
        "post": _op("Wait for the sandbox to exit", schema=_ref("Exit")),
    },
    "/api/sandboxes/{ref}/logs": {
        "parameters": REF_PARAM,
        "get": _op("Captured stdout and stderr (size-capped)", schema=_ref("Logs")),
    },
    "/api/sandboxes/{ref}/stats": {
        "parameters": REF_PARAM,
        "get": _op("Resource usage from the sandbox's cgroup", schema=_ref("Stats")),
    },
    "/api/sandboxes/{ref}/attach": {
        "parameters": REF_PARAM,
        "get": _op(
            "WebSocket: stdout (0x01) / stderr (0x02) frames, stdin (0x00), then the exit as JSON",
            "101",
        ),
    },
    "/api/stats": {
        "get": _op(
            "Stats of all the caller's running sandboxes", schema=_array("Stats"), errors=("401",)
        )
    },
    "/api/users": {
        "post": _op(
            "Add a user (admin); answers with its first token",
            "201",
            "UserCreate",
            _ref("User"),
            ("400", "401", "403", "409"),
        ),
        "get": _op("List users (admin)", schema=_array("User"), errors=("401", "403")),
    },
    "/api/users/{name}": {
        "parameters": NAME_PARAM,
        "get": _op("A user", schema=_ref("User")),
        "delete": _op(
            "Remove a user and their sandboxes (admin)", "204", errors=("401", "403", "404")
        ),
    },
    "/api/users/{name}/tokens": {
        "parameters": NAME_PARAM,
        "post": _op(
            "A new token for the user (admin)",
            "201",
            schema=_ref("Token"),
            errors=("401", "403", "404"),
        ),
    },
    "/api/users/{name}/quota": {
        "parameters": NAME_PARAM,
        "get": _op("Quota and usage", schema=_ref("Quota")),
        "put": _op(
            "Change a user's quota at once (admin)",
            "200",
            "QuotaUpdate",
            _ref("Quota"),
            ("400", "401", "403", "404"),
        ),
        "delete": _op(
            "Back to the configured quota (admin)",
            schema=_ref("Quota"),
            errors=("401", "403", "404"),
        ),
    },
    "/api/whoami": {"get": _op("The caller", schema=_ref("User"), errors=("401",))},
    "/api/status": {"get": _op("Daemon status", schema=_ref("Status"), errors=("401",))},
    "/api/kernelspecs": {"get": _op("Kernelspecs the caller may start", errors=("401",))},
    "/api/kernelspecs/{name}": {
        "parameters": NAME_PARAM,
        "get": _op("One kernelspec", errors=("401", "404")),
    },
    "/kernelspecs/{name}/{file}": {
        "get": {
            **_op("A kernelspec resource (logo)"),
            "parameters": [
                *NAME_PARAM,
                {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        }
    },
    "/api/kernels": {
        "get": _op("The caller's kernels", errors=("401",)),
        "post": _op(
            "Start a kernel in its own sandbox",
            "201",
            errors=("400", "401", "403", "404", "429", "500"),
        ),
    },
    "/api/kernels/{kernel_id}": {
        "parameters": [
            {
                "name": "kernel_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            }
        ],
        "get": _op("A kernel model"),
        "delete": _op("Shut a kernel down and remove its sandbox", "204"),
    },
    "/api/kernels/{kernel_id}/interrupt": {
        "post": _op("SIGINT the kernel", "204", errors=("401", "404", "409"))
    },
    "/api/kernels/{kernel_id}/restart": {
        "post": _op(
            "A fresh kernel process in a fresh sandbox, same id", errors=("401", "404", "409")
        )
    },
    "/api/kernels/{kernel_id}/channels": {
        "get": _op(
            "WebSocket: Jupyter messages (legacy framing, or v1.kernel.websocket.jupyter.org)",
            "101",
        )
    },
    "/api/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3"}},
        }
    },
}

# networks (issue #3) ---------------------------------------------------------------------------
SCHEMAS["SandboxCreate"]["properties"].update(
    {
        "network": {
            "type": "string",
            "description": "bridge | <network name> | none | host | container:<id> | macvlan",
        },
        "ports": {
            "type": "array",
            "items": {"type": "string"},
            "description": "[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]",
        },
    }
)
SCHEMAS.update(
    {
        "NetworkCreate": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "user": {"type": "string", "description": "admin only"},
            },
        },
        "Network": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "user": {"type": "string"},
                "subnet": {"type": "string"},
                "gateway": {"type": "string"},
                "bridge": {"type": "string"},
                "default": {"type": "boolean"},
                "created": {"type": "number"},
                "sandboxes": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    }
)
USER_QUERY = [
    {
        "name": "user",
        "in": "query",
        "schema": {"type": "string"},
        "description": "admin only: another user's network",
    }
]
PATHS.update(
    {
        "/api/networks": {
            "get": _op(
                "The caller's networks (all for an admin)",
                schema=_array("Network"),
                errors=("401", "403"),
            ),
            "post": _op(
                "Create a network",
                "201",
                "NetworkCreate",
                _ref("Network"),
                ("400", "401", "403", "409", "429", "500", "503"),
            ),
        },
        "/api/networks/{name}": {
            "parameters": NAME_PARAM + USER_QUERY,
            "get": _op("Inspect a network", schema=_ref("Network")),
            "delete": _op("Remove an unused network", "204", errors=("401", "403", "404", "409")),
        },
    }
)


# images (issue #13) ----------------------------------------------------------------------------
IMAGE_REF_PARAM = [
    {
        "name": "ref",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "name[:tag], name@sha256:..., an image id or a 12+ hex prefix (URL-encoded)",
    }
]
SCHEMAS.update(
    {
        "Image": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "sha256 of the image config"},
                "names": {"type": "array", "items": {"type": "string"}},
                "digests": {"type": "array", "items": {"type": "string"}},
                "manifest_digest": {"type": "string"},
                "created": {"type": "string", "nullable": True},
                "added": {"type": "number"},
                "size": {"type": "integer", "description": "unpacked bytes of its layers"},
                "os": {"type": "string"},
                "architecture": {"type": "string"},
                "layers": {"type": "array", "items": {"type": "string"}},
                "config": {
                    "type": "object",
                    "properties": {
                        "Env": {"type": "array", "items": {"type": "string"}},
                        "Entrypoint": {
                            "type": "array",
                            "items": {"type": "string"},
                            "nullable": True,
                        },
                        "Cmd": {"type": "array", "items": {"type": "string"}, "nullable": True},
                        "WorkingDir": {"type": "string"},
                        "User": {"type": "string"},
                        "ExposedPorts": {"type": "array", "items": {"type": "string"}},
                        "Labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                },
                "source": {"type": "string", "enum": ["pull", "load"]},
                "sandboxes": {"type": "integer", "description": "sandboxes holding it"},
            },
        },
        "ImagePull": {
            "type": "object",
            "required": ["ref"],
            "properties": {
                "ref": {"type": "string"},
                "profile": {"type": "string", "description": "a profile with allow_pull"},
                "stream": {
                    "type": "boolean",
                    "description": "answer with progress events, one JSON object per line",
                },
            },
        },
        "ImageRemoval": {
            "type": "object",
            "properties": {
                "untagged": {"type": "array", "items": {"type": "string"}},
                "deleted": {"type": "array", "items": {"type": "string"}},
                "layers": {"type": "array", "items": {"type": "string"}},
            },
        },
        "ImagePrune": {
            "type": "object",
            "properties": {
                "images": {"type": "array", "items": {"type": "string"}},
                "layers": {"type": "array", "items": {"type": "string"}},
                "blobs": {"type": "array", "items": {"type": "string"}},
                "bytes_freed": {"type": "integer"},
            },
        },
    }
)
PATHS.update(
    {
        "/api/images": {
            "get": _op("Images in the store", schema=_array("Image"), errors=("401",)),
        },
        "/api/images/pull": {
            "post": _op(
                "Pull an image (admin, or a profile with allow_pull); with stream, 200 and "
                "application/x-ndjson progress ending in a done or error event",
                "201",
                "ImagePull",
                _ref("Image"),
                ("400", "401", "403", "404", "422", "429", "502"),
            ),
        },
        "/api/images/load": {
            "post": {
                **_op(
                    "Load a docker save archive or an OCI layout tar (admin); the body is the "
                    "archive, at most images.max_load_bytes",
                    "201",
                    errors=("400", "401", "403", "413", "422", "429"),
                ),
                "parameters": [
                    {
                        "name": "tag",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "a name for the one image of the archive",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-tar": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
            },
        },
        "/api/images/prune": {
            "post": _op(
                "Remove unnamed, unheld images and unused layers (admin)",
                schema=_ref("ImagePrune"),
                errors=("401", "403"),
            ),
        },
        "/api/images/{ref}": {
            "parameters": IMAGE_REF_PARAM,
            "get": _op("Inspect an image", schema=_ref("Image")),
            "delete": {
                **_op(
                    "Remove a name (or, by id, every name); force untags an image in use (admin)",
                    schema=_ref("ImageRemoval"),
                    errors=("401", "403", "404", "409"),
                ),
                "parameters": [{"name": "force", "in": "query", "schema": {"type": "string"}}],
            },
        },
    }
)


def document(extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sandboxd",
            "version": __version__,
            "description": "Every Jupyter kernel and server in its own Linux container.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`token <TOKEN>`",
                }
            },
        },
        "security": [{"token": []}],
        "paths": {**PATHS, **(extra_paths or {})},
    }


class OpenApiHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.finish(json.dumps(document(self.settings.get("openapi_extra"))))
