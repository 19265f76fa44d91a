"""Schemathesis fuzzes the API from its own OpenAPI document with every check, with and without a valid token."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks

from reporting_pipeline.apps.api import JwtSettings, create_app

from .test_api import AUDIENCE, ISSUER, SECRET, auth
from .test_api_http import enrolled_database

load_all_checks()
ALL_CHECKS = list(CHECKS.get_all())
# Per run; eight runs keep the module well under 30 s on a busy machine.
MAX_EXAMPLES = 60


@pytest.fixture(scope="module")
def schema():
    database = enrolled_database()
    app = create_app(lambda: database, JwtSettings(SECRET, "HS256", ISSUER, AUDIENCE))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


CASES = {}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("with_token", [True, False], ids=["valid-token", "no-token"])
def test_schemathesis_finds_nothing(schema, mode, with_token):
    count = 0

    @given(case=schema.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        nonlocal count
        count += 1
        # A fresh token for each case: a generated one would be refused before the route runs.
        case.call_and_validate(headers=auth() if with_token else None, checks=ALL_CHECKS)

    run()
    assert count > 0
    print(f"schemathesis: {count} test cases ({mode}, {'valid token' if with_token else 'no token'}), "
          f"checks: {', '.join(c.__name__ for c in ALL_CHECKS)}")
