"""stacklock.adapters.ecr without AWS: the tag, the repository name, the login's repr."""

from __future__ import annotations

import pytest

from stacklock.adapters import ecr
from stacklock.errors import InvalidInput


def test_the_tag_is_the_lock_fingerprint() -> None:
    assert ecr.image_tag("sha256:" + "0f" * 32) == "fp-" + "0f" * 32


@pytest.mark.parametrize("bad", ["", "sha256:abc", "md5:" + "0" * 64, "sha256:" + "G" * 64])
def test_an_image_without_a_fingerprint_is_exit_2(bad: str) -> None:
    with pytest.raises(InvalidInput) as err:
        ecr.image_tag(bad)
    assert err.value.exit_code == 2
    assert "stacklock image build" in err.value.problems[0].render()


def test_the_repository_is_the_modules() -> None:
    assert ecr.repository_name("acme-serving", "prod") == "acme-serving/prod/serving"


def test_the_login_keeps_its_credential_out_of_repr() -> None:
    login = ecr.Login(registry="https://1.dkr.ecr.us-east-1.amazonaws.com", expires="",
                      authorization="Basic c2VjcmV0")
    assert "c2VjcmV0" not in repr(login) and "c2VjcmV0" not in str(login)
    assert login.headers() == {"Authorization": "Basic c2VjcmV0"}
