"""The code and its documents agree: every route, method, request field, query parameter and
error reason that exists in the code is in the OpenAPI document, and the generated docs are
current. Pure: reads the source (``ast``) and the models, starts nothing.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import typing

import pytest
from conftest import ROOT
from tornado import web

from sandboxd import docgen
from sandboxd.api import app, contract, openapi
from sandboxd.api.routing import MATRIX, Access
from sandboxd.errors import Reason
from sandboxd.hub import spawner

HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
API_DIR = os.path.join(ROOT, "sandboxd", "api")
DOC = openapi.document(contract.ROUTES)


def _modules(directory: str) -> list[str]:
    out = []
    for base, _, files in os.walk(directory):
        out += [os.path.join(base, f) for f in files if f.endswith(".py")]
    return sorted(out)


def _handlers() -> dict[type, set[str]]:
    """Every request handler class of sandboxd/api and the HTTP methods it implements."""
    found: dict[type, set[str]] = {}
    for fname in sorted(os.listdir(API_DIR)):
        if not fname.endswith(".py"):
            continue
        module = importlib.import_module(f"sandboxd.api.{fname[:-3]}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, web.RequestHandler) or not cls.__module__.startswith("sandboxd"):
                continue
            methods = {
                m
                for m in HTTP_METHODS
                if any(m in vars(k) for k in cls.__mro__ if k.__module__.startswith("sandboxd"))
            }
            found[cls] = methods
    return found


def _ops() -> dict[tuple[type, str], list[contract.Op]]:
    ops: dict[tuple[type, str], list[contract.Op]] = {}
    for route in contract.ROUTES:
        for method, op in route.ops.items():
            ops.setdefault((route.handler, method), []).append(op)
    return ops


def test_served_routes_are_the_documented_ones() -> None:
    served = [pattern for pattern, _ in app.routes()]
    assert served == [r.regex() for r in contract.ROUTES]
    assert [r.template for r in contract.ROUTES if r.template not in DOC["paths"]] == []
    assert sum(len(item) for item in DOC["paths"].values()) == sum(
        len(r.ops) for r in contract.ROUTES
    )


def test_every_handler_method_is_documented() -> None:
    ops = _ops()
    routed = {r.handler for r in contract.ROUTES}
    for cls, methods in _handlers().items():
        if cls.__name__ == "NotFoundHandler" or not methods:
            continue
        assert cls in routed, f"{cls.__name__} serves no documented route"
        for method in methods:
            assert (cls, method) in ops, f"{cls.__name__}.{method} is not in the contract"
    for (cls, method), _ in ops.items():
        assert method in _handlers()[cls], f"the contract lists {cls.__name__}.{method}"


def _calls(func: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(func) if isinstance(n, ast.Call)]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else ""


def _handler_methods() -> list[tuple[type, str, ast.FunctionDef]]:
    out = []
    for cls in _handlers():
        tree = ast.parse(inspect.getsource(cls))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                node.name in HTTP_METHODS
            ):
                out.append((cls, node.name, node))
    return out


def test_every_request_field_and_query_parameter_is_documented() -> None:
    """A handler reads its body and query only through the models its operation documents."""
    ops = _ops()
    for cls, method, func in _handler_methods():
        if (cls, method) not in ops:
            continue
        op = ops[(cls, method)][0]
        query_fields = set(op.query.model_fields) if op.query else set()
        for call in _calls(func):
            fn, args = _name(call.func), call.args
            where = f"{cls.__name__}.{method}"
            if fn == "get_query_argument" and args and isinstance(args[0], ast.Constant):
                assert args[0].value in query_fields, f"{where}: ?{args[0].value} undocumented"
            if fn == "query" and args:
                assert op.query is not None and _name(args[0]) == op.query.__name__, where
            if fn == "validate" and args:
                assert op.body is not None and _name(args[0]) == op.body.__name__, where
            if fn == "body":
                assert op.body is not None, f"{where} reads a body the document does not show"


def test_request_models_are_in_the_document() -> None:
    schemas = DOC["components"]["schemas"]
    for route in contract.ROUTES:
        for method, op in route.ops.items():
            item = DOC["paths"][route.template][method]
            if isinstance(op.body, str):
                assert list(item["requestBody"]["content"]) == [op.body]
            elif op.body is not None:
                shown = schemas[op.body.__name__]["properties"]
                names = {f.alias or n for n, f in op.body.model_fields.items()}
                assert set(shown) == names
            if op.query is not None:
                shown = {p["name"] for p in item["parameters"] if p["in"] == "query"}
                assert shown == set(op.query.model_fields)
            path = {p["name"] for p in item.get("parameters", ()) if p["in"] == "path"}
            assert path == set(route.path_params())


def _error_classes() -> set[str]:
    from sandboxd.errors import SandboxdError

    out, todo = set(), [SandboxdError]
    while todo:
        cls = todo.pop()
        out.add(cls.__name__)
        todo += cls.__subclasses__()
    return out


def _literal_reasons() -> dict[str, str]:
    """Every reason slug written as a literal in sandboxd/: ``reason="..."`` given to an error
    class, ``reason = "..."`` in an error class, and the metrics calls that take one."""
    errors = _error_classes()
    found: dict[str, str] = {}
    for path in _modules(os.path.join(ROOT, "sandboxd")):
        if path.endswith(("errors.py", os.path.join("hub", "spawner.py"))):
            continue
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            values: list[ast.AST] = []
            if isinstance(node, ast.Call) and _name(node.func) in errors:
                values += [k.value for k in node.keywords if k.arg == "reason"]
            if isinstance(node, ast.ClassDef) and {_name(b) for b in node.bases} & errors:
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and _name(stmt.targets[0]) == "reason":
                        values.append(stmt.value)
            if isinstance(node, ast.Call) and _name(node.func) in (
                "resource_refusal",
                "admission_refused",
            ):
                values += node.args[-1:]
            for value in values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    found.setdefault(value.value, f"{path}:{value.lineno}")
    return found


def _enum_reasons_used() -> set[str]:
    used: set[str] = set()
    for path in _modules(os.path.join(ROOT, "sandboxd")):
        if path.endswith(os.path.join("hub", "spawner.py")):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Attribute) and _name(node.value) == "Reason":
                used.add(Reason[node.attr].value)
    return used


def test_every_reason_in_the_code_is_a_documented_reason() -> None:
    members = {r.value for r in Reason}
    stray = {r: at for r, at in _literal_reasons().items() if r not in members}
    assert stray == {}, f"reasons missing from errors.Reason: {stray}"
    assert set(DOC["components"]["schemas"]["Reason"]["enum"]) == members


def test_every_reason_is_emitted_somewhere() -> None:
    """No dead members: each one is raised (or is a class default) somewhere in the daemon."""
    emitted = set(_literal_reasons()) | _enum_reasons_used()
    assert {r.value for r in Reason} - emitted == set()


def test_spawner_maps_only_reasons_the_daemon_emits() -> None:
    emitted = set(_literal_reasons()) | _enum_reasons_used()
    assert all(isinstance(r, Reason) for r in spawner.REASONS)
    assert set(spawner.REASONS) <= emitted


def test_user_name_pattern_is_one() -> None:
    from sandboxd import admission
    from sandboxd.models.types import USER_PATTERN

    users = next(r for r in contract.ROUTES if r.template == "/api/users/{name}")
    assert users.params["name"] == USER_PATTERN
    assert admission.USER_NAME.pattern == spawner.USER_NAME.pattern == USER_PATTERN.strip("^$")
    assert not admission.USER_NAME.fullmatch("a" * 33)
    shown = DOC["components"]["schemas"]["UserCreate"]["properties"]["name"]["pattern"]
    assert shown == USER_PATTERN


def test_every_operation_has_an_access_class() -> None:
    for route in contract.ROUTES:
        for method, op in route.ops.items():
            assert op.access in MATRIX
            item = DOC["paths"][route.template][method]
            assert item["x-access"] == op.access
            assert ("security" in item) == (op.access is Access.PUBLIC)
            for caller, status in MATRIX[op.access].items():
                if status is not None:
                    assert str(status) in item["responses"], (route.template, method, caller)


#: handlers that take no token from BaseHandler but authorize by rules of their own
SELF_AUTHORIZED = {"MetricsHandler"}


def test_public_handlers_are_the_public_operations() -> None:
    """``BaseHandler.public`` (no token asked) and the contract's ``public`` agree."""
    for route in contract.ROUTES:
        for op in route.ops.values():
            public = getattr(route.handler, "public", False)
            if op.access is Access.PUBLIC:
                assert public, route.template
            elif public:
                assert route.handler.__name__ in SELF_AUTHORIZED, route.template


@pytest.mark.parametrize(
    "model", ["SandboxCreate", "Sandbox", "UserCreate", "NetworkCreate", "KernelStart"]
)
def test_known_drift_is_gone(model: str) -> None:
    props = DOC["components"]["schemas"][model]["properties"]
    if model == "SandboxCreate":
        assert "image" in props and "kind" not in props
    assert props


def test_volume_routes_are_documented() -> None:
    assert {"/api/users/{user}/volumes", "/api/users/{user}/volumes/{name}"} <= set(DOC["paths"])
    item = DOC["paths"]["/api/users/{user}/volumes/{name}"]
    assert set(item) == {"get", "put", "delete"}


def test_response_models_refuse_undocumented_fields() -> None:
    schemas = DOC["components"]["schemas"]
    for route in contract.ROUTES:
        for op in route.ops.values():
            model = op.response
            if typing.get_origin(model) is list:
                model = typing.get_args(model)[0]
            if isinstance(model, type):
                assert schemas[model.__name__].get("additionalProperties") is False, model


def test_generated_docs_are_current() -> None:
    with open(docgen.CONFIG_MD) as fh:
        assert fh.read() == docgen.config_md(), "run: python -m sandboxd.docgen"
    with open(docgen.API_MD) as fh:
        text = fh.read()
    assert text == docgen.api_md(text), "run: python -m sandboxd.docgen"


def test_every_config_key_is_documented() -> None:
    from sandboxd.models.config import ConfigFile, NetworkSettings, Profile, Quota, UserTable

    with open(docgen.CONFIG_MD) as fh:
        text = fh.read()
    for model in (ConfigFile, Profile, Quota, UserTable, NetworkSettings):
        for name, field in model.model_fields.items():
            assert f"`{field.alias or name}`" in text or name in (
                "profiles",
                "quotas",
                "groups",
                "users",
                "network",
                "images",
            ), name
