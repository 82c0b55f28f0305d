"""A small read-heavy feed service that the z2m operator grows from stage 1 to stage 5.

Users post short messages and follow each other; reads (a post, a user's
posts) dominate.  The service is configured only from the environment (see
:mod:`sample_app.config`) and turns each backing service on when its variable
is set: PostgreSQL primary, read replicas, Redis cache, RabbitMQ jobs.
"""
