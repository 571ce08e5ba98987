"""The API's error bodies as clients read them: JSON with a ``detail`` sentence that names what is wrong."""


def assert_error(response, status: int, *fragments: str) -> dict:
    """``response`` is ``status`` with a JSON body whose ``detail`` is a non-empty sentence holding each fragment."""
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert isinstance(body["detail"], str) and body["detail"]
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body
