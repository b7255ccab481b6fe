import orjson

from gwcore.errors import GatewayError


def test_openai_shape_and_default_type():
    err = GatewayError(404, "no such model", code="model_not_found", param="model")
    assert orjson.loads(err.to_json()) == {
        "error": {
            "message": "no such model",
            "type": "not_found_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert GatewayError(503, "x").type == "server_error"
    assert GatewayError(418, "x").type == "invalid_request_error"
