"""One error taxonomy (model.errors): every error class of the project, walked, against what each wire says.

Each class's kind must be in every wire's table, and each kind must read as the table below says on
HTTP (status and OpenAI error type), gRPC (status code) and the CLI (exit code 2, one line). A new
kind, or a class whose kind a wire does not map, fails here until each wire's one table has it.
"""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import pytest

from model.errors import ASRError, Kind
from tests.conftest import REPO_ROOT

# The contract, kind by kind: (HTTP status, OpenAI error type, gRPC status).
EXPECTED = {
    Kind.BAD_REQUEST: (400, "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
    Kind.UNSUPPORTED_MEDIA: (415, "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
    Kind.TOO_LARGE: (413, "invalid_request_error", grpc.StatusCode.INVALID_ARGUMENT),
    Kind.NOT_FOUND: (404, "invalid_request_error", grpc.StatusCode.NOT_FOUND),
    Kind.WRONG_KIND: (400, "invalid_request_error", grpc.StatusCode.FAILED_PRECONDITION),
    Kind.UNAUTHENTICATED: (401, "invalid_request_error", grpc.StatusCode.UNAUTHENTICATED),
    Kind.BUSY: (429, "server_busy", grpc.StatusCode.RESOURCE_EXHAUSTED),
    Kind.DEADLINE: (504, "timeout", grpc.StatusCode.DEADLINE_EXCEEDED),
    Kind.IDLE: (408, "timeout", grpc.StatusCode.OUT_OF_RANGE),
    Kind.CANCELLED: (499, "invalid_request_error", grpc.StatusCode.CANCELLED),
    Kind.UNAVAILABLE: (503, "unavailable", grpc.StatusCode.UNAVAILABLE),
    Kind.UPSTREAM: (502, "upstream_error", grpc.StatusCode.UNAVAILABLE),
    Kind.STORAGE: (507, "server_error", grpc.StatusCode.RESOURCE_EXHAUSTED),
}
PACKAGES = ("model", "service", "training", "cli", "lm", "interop")


def _all_error_classes() -> list[type[ASRError]]:
    for package in PACKAGES:
        for module in pkgutil.walk_packages([str(REPO_ROOT / package)], prefix=f"{package}."):
            if "_pb2" not in module.name:
                importlib.import_module(module.name)
    found, todo = [], [ASRError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.split(".")[0] in PACKAGES]


def _instance(cls: type[ASRError]) -> ASRError:
    """An instance with a message naming a server path (which no wire may repeat)."""
    import inspect

    message = "cannot read /srv/registry/secret/model.bin"
    # Constructors that take more than a message: a kind (interop.hubs.PullError), the parameter at fault
    # (service.openai_api), or a code before the message (service.realtime_ws).
    values = {"message": message, "kind": Kind.BAD_REQUEST, "param": "file", "code": "some_code"}
    parameters = [p for p in inspect.signature(cls.__init__).parameters.values()
                  if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty]
    if not parameters or cls.__init__ is ASRError.__init__:
        return cls(message)
    return cls(*(values[p.name] for p in parameters))


ERROR_CLASSES = _all_error_classes()


def test_every_kind_is_in_every_wire_table_once():
    from service.grpc_api import GRPC_BY_KIND
    from service.http_errors import HTTP_BY_KIND

    assert set(HTTP_BY_KIND) == set(GRPC_BY_KIND) == set(Kind) == set(EXPECTED)
    assert len(ERROR_CLASSES) >= 30  # the walk found the project's errors, not just the root


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_each_error_reads_as_its_kind_on_every_wire(cls, capsys, monkeypatch):
    import json

    from cli import main as cli_main
    from service.grpc_api import status_for
    from service.http_errors import error_response

    error = _instance(cls)
    status, openai_type, grpc_code = EXPECTED[error.kind]
    response = error_response(error)
    body = json.loads(response.body)["error"]
    assert (response.status_code, body["type"], body["code"]) == (status, openai_type, error.code)
    assert "/srv/registry" not in body["message"]
    code, message = status_for(error)
    assert code == grpc_code and "/srv/registry" not in message

    def fails(args):
        raise error

    monkeypatch.setattr(cli_main, "cmd_models_list", fails)
    assert cli_main.main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("asr: error: ") and len(err.strip().splitlines()) == 1


def test_anything_else_is_internal_on_every_wire(capsys, monkeypatch):
    import json

    from cli import main as cli_main
    from service.grpc_api import status_for
    from service.http_errors import error_response

    bug = KeyError("/srv/registry/secret")
    response = error_response(bug)
    assert response.status_code == 500 and "/srv" not in json.loads(response.body)["error"]["message"]
    assert status_for(bug)[0] == grpc.StatusCode.INTERNAL

    def fails(args):
        raise bug

    monkeypatch.setattr(cli_main, "cmd_models_list", fails)
    assert cli_main.main(["models", "list"]) == 1
    assert "internal error" in capsys.readouterr().err
