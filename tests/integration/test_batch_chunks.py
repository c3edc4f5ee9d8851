"""How intake cuts a job into chunks, on the real S3 stand-in: small chunks first, so progress moves
early, then chunks that grow with the job (at most 2% of the requests before them, at most
BATCH_CHUNK_SIZE_MAX), so a big job is a few hundred S3 objects, not thousands."""

from __future__ import annotations

import pytest

from harness.requests import chat_lines
from harness.servers import RedisServer, S3Server, batch_env
from runtime.batch.intake import chunk_size_after, split_input
from runtime.batch.models import ENDPOINTS
from runtime.batch.storage import ObjectStore, chunk_input_key
from runtime.batch.validation import RequestLine
from tests.integration.batch_fixtures import settings_of

pytestmark = pytest.mark.integration


def test_chunks_start_small_then_grow_with_the_job_up_to_the_maximum(
    redis_server: RedisServer, s3_server: S3Server
) -> None:
    settings = settings_of(
        batch_env(redis_server, s3_server, s3_bucket="batch-chunks", chunk_size="10", chunk_size_max="40")
    )
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    lines = chat_lines(3000, max_tokens=1, prefix="g")
    valid, invalid, chunks, _endpoint, _model = split_input(
        objects,
        (line.encode() for line in lines),
        batch_id="batch_chunks",
        endpoint=None,
        endpoints=ENDPOINTS,
        settings=settings,
        invalid_lines="reject",
    )
    assert (valid, invalid) == (3000, 0)
    sizes, custom_ids = [], []
    for index in range(chunks):
        rows = RequestLine.from_chunk(objects.get(chunk_input_key("batch_chunks", index)))
        sizes.append(len(rows))
        custom_ids += [row.custom_id for row in rows]
    assert custom_ids == [f"g{i}" for i in range(3000)], "every request once, in file order"
    assert sizes[:50] == [10] * 50, "the first 500 requests (50 x the minimum) go in chunks of the minimum"
    assert sizes[50] == 10 and sizes[51] == 10 and max(sizes) == 40
    before = 0
    for size in sizes[:-1]:  # the last chunk holds what is left
        assert size == max(10, min(40, before // 50)), f"chunk after {before} requests"
        before += size
    assert chunks == len(sizes) < 3000 // 10


def test_the_chunk_size_is_the_minimum_and_a_larger_minimum_wins_over_the_maximum() -> None:
    class Sizes:
        chunk_size, chunk_size_max = 100, 1000

    assert [chunk_size_after(n, Sizes) for n in (0, 4_999, 5_000, 5_050, 20_000, 50_000, 10**6)] == [  # type: ignore[arg-type]
        100, 100, 100, 101, 400, 1000, 1000,
    ]  # fmt: skip
    Sizes.chunk_size = 5000  # batchChunkSize above the maximum: fixed chunks of that size
    assert chunk_size_after(10**6, Sizes) == 5000  # type: ignore[arg-type]
