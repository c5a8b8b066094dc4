/*
 * The shim's decision cache: daemon answers (allow and deny) keyed by the
 * exact (anonymous?, username, client id, access, topic) tuple, plus
 * "scoped" answers that hold for every topic under a filter the daemon
 * proved (CheckAclResponse.cache_scope).
 *
 * Owned and used by the broker's main thread only (checks, disconnects and
 * ticks all run there), so it takes no lock at all; the only value shared
 * with other threads is the policy generation, which callers pass in.
 *
 * Bounded by entries and by bytes (struct cache_limits): when either limit
 * would be passed the oldest inserted entry is evicted; one client holds at
 * most max_client_entries (its own oldest goes first), so a client that asks
 * about endless distinct topics only churns its own entries; texts longer
 * than max_text_len are not cached at all. Expired entries are freed by
 * cache_sweep() in slices. Memory comes from the broker's allocator, so
 * its memory_limit and heap figures see it. Entries are never refreshed by
 * a hit: an answer lives at most its TTL from the moment the daemon gave it.
 */
#ifndef POLICYD_CACHE_H
#define POLICYD_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Scoped entries kept per client and access; the oldest is replaced. */
#define CACHE_SCOPES_PER_ACCESS 8
#define CACHE_ACCESS_SLOTS 4   /* read, write, subscribe, unsubscribe */

struct cache;

/* Who is asking: the client part of every key is (anonymous?, username,
 * client id); username NULL = anonymous. `owner` is the broker's client
 * pointer (NULL if none): it finds the identity's entries without hashing
 * either string, after one comparison of both with the identity last seen
 * at that pointer. It is never dereferenced, and a pointer that now carries
 * another identity (reused, or a stand-in) finds nothing through it. */
struct cache_identity {
	const void *owner;
	const char *username;   /* NUL-terminated */
	const char *client_id;  /* NUL-terminated */
};

struct cache_answer {
	bool allow;
	uint64_t generation;
};

enum cache_lookup {
	CACHE_MISS,
	CACHE_HIT,        /* fresh answer of the current generation */
};

struct cache_limits {
	size_t max_entries;         /* 0 disables the cache (every call misses / does nothing) */
	size_t max_bytes;           /* accounted bytes: tables, clients, entries */
	size_t max_client_entries;  /* per (username, client id) */
	size_t max_text_len;        /* longer topics and filters are never stored */
};

/* Returns NULL only when out of memory. */
struct cache *cache_create(const struct cache_limits *limits);
void cache_destroy(struct cache *cache);

/* Looks up `topic` for this identity and access (a MOSQ_ACL_* value): the
 * client's scoped filters, then the exact entry (the daemon gives one answer
 * per identity, access and topic within a generation, so the order only
 * saves work). Entries of a generation other than `generation` are never
 * returned; with grace_ms > 0 an entry expired less than grace_ms ago is
 * returned too (on_error stale). */
enum cache_lookup cache_lookup(struct cache *cache, const struct cache_identity *id, int access,
		const char *topic, size_t topic_len, uint64_t generation, int64_t now_ms,
		int64_t grace_ms, struct cache_answer *out);

/* Stores an answer valid until expires_ms. scope NULL: for this topic only;
 * otherwise for every topic the filter `scope` matches. */
void cache_store(struct cache *cache, const struct cache_identity *id, int access,
		const char *topic, size_t topic_len, const char *scope, size_t scope_len,
		const struct cache_answer *answer, int64_t expires_ms);

/* Whether this identity has any entry (of any generation or age). */
bool cache_knows(struct cache *cache, const struct cache_identity *id);

/* Drops every entry of this identity, and what `owner` was last seen as
 * (MOSQ_EVT_DISCONNECT). */
void cache_drop_client(struct cache *cache, const struct cache_identity *id);

/* Drops every entry whose generation is not `generation`. */
void cache_flush_generation(struct cache *cache, uint64_t generation);

/* Frees entries that expired at or before `cutoff_ms`, visiting at most
 * `max_visits` entries from where the previous sweep stopped (round robin
 * over the insertion order). Returns how many were freed. */
size_t cache_sweep(struct cache *cache, int64_t cutoff_ms, size_t max_visits);
/* Whether the next sweep starts a new pass from the oldest entry. */
bool cache_sweep_at_start(const struct cache *cache);

size_t cache_entries(const struct cache *cache);
size_t cache_capacity(const struct cache *cache);
size_t cache_bytes(const struct cache *cache);       /* accounted bytes in use */
size_t cache_bytes_limit(const struct cache *cache);
uint64_t cache_evictions(const struct cache *cache);
uint64_t cache_not_stored(const struct cache *cache); /* too long, or out of memory */

#endif
