"""Route each user's queries to the PostgreSQL shard that holds the user.

``DATABASE_SHARDS`` lists the shards' URLs, comma-separated, in shard order; a
user with id ``u`` lives on shard ``u % N`` with their posts, the follows they
made and their notifications (the same rule as ``z2m.sharding``, which moves
the rows).  Reading a user's feed fans out: one query per shard that holds
someone they follow.

A new user is created on the shard their name hashes to; the shard's id
sequence (set by the move: shard *k* hands out ids ``≡ k (mod N)``) then gives
them an id that routes back to it.  ``users.name`` is unique per shard only, so
hashing the name keeps two sign-ups of one name on the same shard.

Not here: the unsharded app (``sample_app.db``), cross-shard transactions
(there are none: every write touches one user's rows), or moving data.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

from sample_app import db


def parse_shard_urls(value: str | None) -> tuple[str, ...]:
    """``DATABASE_SHARDS`` as a tuple of URLs (empty when unset)."""
    if not value or not value.strip():
        return ()
    urls = tuple(part.strip() for part in value.split(","))
    if any(not url.startswith(("postgresql://", "postgres://")) for url in urls):
        raise ValueError("DATABASE_SHARDS: every entry must be a postgresql:// URL")
    return urls


def shard_index(user_id: int, shards: int) -> int:
    """The shard of ``user_id``: ``user_id % shards``."""
    return user_id % shards


class ShardedDatabase:
    """One :class:`sample_app.db.Database` per shard, picked by user id."""

    def __init__(self, urls: Sequence[str]) -> None:
        """Create (but don't open) one pool per shard."""
        if not urls:
            raise ValueError("at least one shard")
        self.shards = [db.Database(url) for url in urls]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ShardedDatabase:
        """From ``DATABASE_SHARDS``, or ``DATABASE_URL`` as the one shard."""
        urls = parse_shard_urls(env.get("DATABASE_SHARDS")) or (env["DATABASE_URL"],)
        return cls(urls)

    async def open(self) -> None:
        """Open every shard's pool."""
        for shard in self.shards:
            await shard.open()

    async def close(self) -> None:
        """Close every shard's pool."""
        for shard in self.shards:
            await shard.close()

    def for_user(self, user_id: int) -> db.Database:
        """The shard holding ``user_id``."""
        return self.shards[shard_index(user_id, len(self.shards))]

    def for_new_user(self, name: str) -> tuple[int, db.Database]:
        """The shard a new user called ``name`` is created on, and its index."""
        index = zlib.crc32(name.encode()) % len(self.shards)
        return index, self.shards[index]

    async def migrate(self) -> list[int]:
        """Apply pending migrations on every shard; the versions applied anywhere."""
        applied: set[int] = set()
        for shard in self.shards:
            applied.update(await shard.migrate())
        return sorted(applied)

    async def find_post(self, post_id: int) -> list[db.Row]:
        """One post by id, from whichever shard holds it (ids are unique across shards)."""
        for shard in self.shards:
            rows = await shard.read(
                "SELECT id, author_id, body, created_at FROM posts WHERE id = %s",
                (post_id,),
                primary=True,
            )
            if rows:
                return rows
        return []

    async def ping(self) -> list[int]:
        """The indexes of the shards whose primary does not answer."""
        return [i for i, shard in enumerate(self.shards) if not await shard.ping_primary()]

    async def create_post(self, author_id: int, body: str) -> int:
        """Insert a post on its author's shard; returns its id."""
        rows = await self.for_user(author_id).write(
            "INSERT INTO posts (author_id, body) VALUES (%s, %s) RETURNING id", (author_id, body)
        )
        return int(rows[0]["id"])

    async def follow(self, follower_id: int, followee_id: int) -> None:
        """Record a follow on the follower's shard."""
        await self.for_user(follower_id).write(
            "INSERT INTO follows (follower_id, followee_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (follower_id, followee_id),
        )

    async def feed(self, user_id: int, limit: int = 20) -> list[db.Row]:
        """The newest posts of whoever ``user_id`` follows, across shards."""
        rows = await self.for_user(user_id).read(
            "SELECT followee_id FROM follows WHERE follower_id = %s", (user_id,), primary=True
        )
        by_shard: dict[int, list[int]] = {}
        for row in rows:
            followee = int(row["followee_id"])
            by_shard.setdefault(shard_index(followee, len(self.shards)), []).append(followee)
        posts: list[db.Row] = []
        for index, authors in sorted(by_shard.items()):
            posts += await self.shards[index].read(
                "SELECT id, author_id, body FROM posts WHERE author_id = ANY(%s)"
                " ORDER BY id DESC LIMIT %s",
                (authors, limit),
                primary=True,
            )
        posts.sort(key=lambda row: int(row["id"]), reverse=True)
        return posts[:limit]
