"""The Prometheus metrics the app exports.

The names and labels are a contract: the operator's auto-promotion PromQL
queries them, so don't rename them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Loopback database and cache calls take well under a millisecond, which the
# default buckets (starting at 5 ms) can't resolve.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_REQUESTS = Counter("app_http_requests", "HTTP requests served.", ["route", "method", "status"])
HTTP_DURATION = Histogram(
    "app_http_request_duration_seconds",
    "HTTP request latency.",
    ["route", "method"],
    buckets=_FAST_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("app_http_requests_in_flight", "HTTP requests being served right now.")

DB_QUERIES = Counter("app_db_queries", "SQL statements executed.", ["target"])
DB_DURATION = Histogram(
    "app_db_query_duration_seconds", "SQL statement latency.", ["target"], buckets=_FAST_BUCKETS
)
DB_POOL = Gauge("app_db_pool_connections", "Pooled connections.", ["target", "state"])

CACHE_REQUESTS = Counter("app_cache_requests", "Cache look-ups.", ["result"])

QUEUE_DEPTH = Gauge(
    "app_queue_depth",
    "Jobs waiting: messages ready in the RabbitMQ queue, records the Kafka group has not done.",
)
STREAM_LAG = Gauge(
    "app_stream_lag", "Kafka records behind the end of the partitions this worker holds."
)
JOBS_PUBLISHED = Counter("app_jobs_published", "Jobs confirmed by the broker.")
JOBS_PROCESSED = Counter("app_jobs_processed", "Jobs handled by a worker.", ["outcome"])
JOB_DURATION = Histogram("app_job_duration_seconds", "Job processing time.")

SEARCH_REQUESTS = Counter(
    "app_search_requests", "Searches, by the backend that answered.", ["backend"]
)
SEARCH_DURATION = Histogram(
    "app_search_duration_seconds", "Search latency by backend.", ["backend"], buckets=_FAST_BUCKETS
)
SEARCH_INDEXED = Counter(
    "app_search_indexed_posts", "Posts written to the search index, by how.", ["how"]
)
