from tests.integration.batch_fixtures import redis_server, s3_server  # noqa: F401 - fixtures
from tests.integration.offload_fixtures import postgres_server  # noqa: F401 - fixtures
