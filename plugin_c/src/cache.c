/*
 * Decision cache (see cache.h). Two fixed-size chained hash tables keyed
 * with a per-process random SipHash key, so hostile identities or topics
 * cannot be chosen to pile into one bucket:
 *   clients: (anonymous?, username, client id) -> struct cache_client
 *   entries: (client, access, topic)           -> struct cache_entry
 * plus a third, keyed by the broker's client pointer (its `owner`): a check
 * finds its client there and confirms the identity with two string
 * comparisons, with no hashing of attacker-chosen strings. Each pointer is
 * bound to at most one client and each client to at most one pointer (the
 * last connection that used it), so no chain grows with reuse.
 * A client owns its entries (exact and scoped) and is freed with the last
 * of them. Scoped entries keep their filter's shape (topic_match.h), so a
 * match does not split the filter into levels. Every entry is also on one insertion-ordered list, whose head is
 * what gets evicted when the cache is full, and which the sweep walks.
 *
 * Bytes are accounted as what each allocation asks for plus a fixed
 * estimate of the allocator's own overhead per block.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto_broker.h>

#include "cache.h"
#include "topic_match.h"

struct cache_client;

struct cache_entry {
	struct cache_entry *hnext;          /* entry bucket chain (exact entries only) */
	struct cache_entry *older, *newer;  /* insertion order, all entries */
	struct cache_entry *cprev, *cnext;  /* this client's entries, newest first */
	struct cache_client *client;
	uint64_t hash;
	uint64_t generation;
	int64_t expires_ms;
	uint8_t slot;                       /* access slot, 0..CACHE_ACCESS_SLOTS-1 */
	bool scoped;                        /* text is a filter, not a topic */
	uint8_t shape;                      /* scoped: topic_filter_shape(text) */
	bool allow;
	size_t text_len;
	char text[];
};

struct cache_client {
	struct cache_client *hnext;
	struct cache_client *onext;         /* owner bucket chain */
	const void *owner;                  /* bound broker client pointer, or NULL; never dereferenced */
	uint64_t hash;
	uint64_t serial;                    /* mixed into entry hashes */
	size_t entry_count;
	struct cache_entry *entries;        /* newest */
	struct cache_entry *oldest_entry;   /* the end of `entries` */
	struct cache_entry *scopes[CACHE_ACCESS_SLOTS][CACHE_SCOPES_PER_ACCESS]; /* the first scope_count[] */
	uint8_t scope_count[CACHE_ACCESS_SLOTS];
	bool anonymous;
	size_t username_len;
	size_t client_id_len;
	char key[];                         /* username, NUL, client id, NUL */
};

/* An identity's lengths, measured once per call that needs them. */
struct identity_len {
	size_t username;                    /* 0 when anonymous */
	size_t client_id;
};

struct cache {
	struct cache_limits limits;
	size_t count;
	size_t bytes;                       /* accounted, see ALLOC_OVERHEAD */
	uint64_t evictions;
	uint64_t not_stored;
	uint64_t next_serial;
	uint64_t k0, k1;
	size_t mask;                        /* bucket count - 1 (both tables) */
	struct cache_entry **entry_buckets;
	struct cache_client **client_buckets;
	struct cache_client **owner_buckets;
	struct cache_entry *oldest, *newest;
	struct cache_entry *sweep_next;     /* where the next sweep starts; NULL: the oldest */
};

/* What one heap block costs beyond the bytes asked for (glibc: 8-16). */
#define ALLOC_OVERHEAD 16
/* No entry is smaller than this: sizes the hash tables for the byte budget. */
#define ENTRY_MIN_BYTES (sizeof(struct cache_entry) + ALLOC_OVERHEAD)


static size_t entry_cost(size_t text_len)
{
	return sizeof(struct cache_entry) + text_len + ALLOC_OVERHEAD;
}


static size_t client_cost(size_t key_len)
{
	return sizeof(struct cache_client) + key_len + 2 + ALLOC_OVERHEAD;
}


/* ------------------------------------------------------------- hashing */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
	} while(0)

/* SipHash-1-3: fast, and keyed so bucket positions cannot be predicted. */
static uint64_t siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
	uint64_t b = (uint64_t)len << 56, m;
	size_t i, left = len & 7;

	for(i = 0; i + 8 <= len; i += 8){
		memcpy(&m, p + i, 8);
		v3 ^= m; SIPROUND; v0 ^= m;
	}
	for(size_t j = 0; j < left; j++){
		b |= (uint64_t)p[i + j] << (8 * j);
	}
	v3 ^= b; SIPROUND; v0 ^= b;
	v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}


static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33; x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
	return x ^ (x >> 33);
}


/* Each field hashed on its own (lengths are part of SipHash's input), then
 * combined: no two different tuples are one byte string. */
static uint64_t client_hash(const struct cache *c, const struct cache_identity *id, const struct identity_len *len)
{
	uint64_t hu = id->username ? siphash13(c->k0, c->k1, id->username, len->username) : 0x5a5a;
	uint64_t hc = siphash13(c->k1, c->k0, id->client_id, len->client_id);

	return mix64(hu ^ mix64(hc + (id->username ? 1 : 2)));
}


/* Broker pointers are not chosen by clients, so one keyed multiplication
 * spreads them enough (this runs on every check); its middle bits depend on
 * every bit of the pointer below them. */
static inline size_t owner_bucket(const struct cache *c, const void *owner)
{
	return (size_t)((((uint64_t)(uintptr_t)owner ^ c->k0) * 0x9e3779b97f4a7c15ULL) >> 29) & c->mask;
}


static void identity_measure(const struct cache_identity *id, struct identity_len *len)
{
	len->username = id->username ? strlen(id->username) : 0;
	len->client_id = strlen(id->client_id);
}


static uint64_t entry_hash(const struct cache *c, const struct cache_client *client, int slot,
		const char *topic, size_t topic_len)
{
	return mix64(siphash13(c->k0, c->k1, topic, topic_len) ^ mix64(client->serial * 8 + (uint64_t)slot));
}


static void random_key(uint64_t *k0, uint64_t *k1)
{
	uint64_t k[2];

	if(getrandom(k, sizeof(k), GRND_NONBLOCK) != (ssize_t)sizeof(k)){
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		k[0] = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32));
		k[1] = mix64((uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)k);
	}
	*k0 = k[0];
	*k1 = k[1];
}


/* MOSQ_ACL_READ/WRITE/SUBSCRIBE/UNSUBSCRIBE (1, 2, 4, 8) -> 0..3, else -1. */
static int access_slot(int access)
{
	switch(access){
		case 1: return 0;
		case 2: return 1;
		case 4: return 2;
		case 8: return 3;
	}
	return -1;
}


/* ----------------------------------------------------------- lifecycle */

/* One bucket per entry the limits allow, as a power of two. */
static size_t bucket_count(const struct cache_limits *limits)
{
	size_t wanted = limits->max_entries;
	size_t buckets = 16;

	if(wanted > limits->max_bytes / ENTRY_MIN_BYTES){
		wanted = limits->max_bytes / ENTRY_MIN_BYTES;
	}
	while(buckets < wanted){
		buckets <<= 1;
	}
	return buckets;
}


struct cache *cache_create(const struct cache_limits *limits)
{
	struct cache *c = mosquitto_calloc(1, sizeof(*c));
	size_t buckets;

	if(c == NULL){
		return NULL;
	}
	c->limits = *limits;
	c->next_serial = 1;
	random_key(&c->k0, &c->k1);
	buckets = bucket_count(limits);
	c->mask = buckets - 1;
	c->bytes = sizeof(*c) + ALLOC_OVERHEAD;
	if(limits->max_entries > 0){
		c->entry_buckets = mosquitto_calloc(buckets, sizeof(*c->entry_buckets));
		c->client_buckets = mosquitto_calloc(buckets, sizeof(*c->client_buckets));
		c->owner_buckets = mosquitto_calloc(buckets, sizeof(*c->owner_buckets));
		if(c->entry_buckets == NULL || c->client_buckets == NULL || c->owner_buckets == NULL){
			cache_destroy(c);
			return NULL;
		}
		c->bytes += 3 * (buckets * sizeof(void *) + ALLOC_OVERHEAD);
	}
	return c;
}


static void entry_remove(struct cache *c, struct cache_entry *e, bool keep_client);

void cache_destroy(struct cache *c)
{
	if(c == NULL){
		return;
	}
	while(c->oldest){
		entry_remove(c, c->oldest, false);
	}
	mosquitto_free(c->entry_buckets);
	mosquitto_free(c->client_buckets);
	mosquitto_free(c->owner_buckets);
	mosquitto_free(c);
}


size_t cache_entries(const struct cache *c)
{
	return c ? c->count : 0;
}


size_t cache_capacity(const struct cache *c)
{
	return c ? c->limits.max_entries : 0;
}


size_t cache_bytes(const struct cache *c)
{
	return c ? c->bytes : 0;
}


size_t cache_bytes_limit(const struct cache *c)
{
	return c ? c->limits.max_bytes : 0;
}


uint64_t cache_not_stored(const struct cache *c)
{
	return c ? c->not_stored : 0;
}


uint64_t cache_evictions(const struct cache *c)
{
	return c ? c->evictions : 0;
}


/* ------------------------------------------------------------- clients */

static bool client_is(const struct cache_client *cl, uint64_t hash, const struct cache_identity *id,
		const struct identity_len *len)
{
	return cl->hash == hash
			&& cl->anonymous == (id->username == NULL)
			&& cl->username_len == len->username
			&& cl->client_id_len == len->client_id
			&& memcmp(cl->key, id->username ? id->username : "", cl->username_len) == 0
			&& memcmp(cl->key + cl->username_len + 1, id->client_id, len->client_id) == 0;
}


/* The same question as client_is() without lengths or a hash: the key keeps
 * both strings NUL-terminated (identities come from the broker as C strings). */
static inline bool client_is_now(const struct cache_client *cl, const struct cache_identity *id)
{
	if(id->username == NULL){
		if(!cl->anonymous){
			return false;
		}
	}else if(cl->anonymous || strcmp(cl->key, id->username) != 0){
		return false;
	}
	return strcmp(cl->key + cl->username_len + 1, id->client_id) == 0;
}


static struct cache_client *client_find(struct cache *c, const struct cache_identity *id, uint64_t hash,
		const struct identity_len *len)
{
	struct cache_client *cl;

	for(cl = c->client_buckets[hash & c->mask]; cl; cl = cl->hnext){
		if(client_is(cl, hash, id, len)){
			return cl;
		}
	}
	return NULL;
}


static inline struct cache_client *owner_find(struct cache *c, const void *owner)
{
	struct cache_client *cl;

	for(cl = c->owner_buckets[owner_bucket(c, owner)]; cl; cl = cl->onext){
		if(cl->owner == owner){
			return cl;
		}
	}
	return NULL;
}


static void owner_unbind(struct cache *c, struct cache_client *cl)
{
	struct cache_client **pp;

	if(cl->owner == NULL){
		return;
	}
	pp = &c->owner_buckets[owner_bucket(c, cl->owner)];
	while(*pp && *pp != cl){
		pp = &(*pp)->onext;
	}
	if(*pp){
		*pp = cl->onext;
	}
	cl->onext = NULL;
	cl->owner = NULL;
}


/* From now on `owner` finds cl, and nothing else. */
static void owner_bind(struct cache *c, struct cache_client *cl, const void *owner)
{
	struct cache_client *held, **bucket;

	if(owner == NULL || cl->owner == owner){
		return;
	}
	owner_unbind(c, cl);
	held = owner_find(c, owner);
	if(held){
		owner_unbind(c, held);
	}
	bucket = &c->owner_buckets[owner_bucket(c, owner)];
	cl->owner = owner;
	cl->onext = *bucket;
	*bucket = cl;
}


/* By the identity's hash; `owner` is then bound to what that finds. `stale`:
 * the client the pointer was bound to, with another identity. */
static __attribute__((noinline)) struct cache_client *client_by_identity(struct cache *c,
		const struct cache_identity *id, struct cache_client *stale)
{
	struct cache_client *cl;
	struct identity_len len;

	if(stale){
		owner_unbind(c, stale); /* another identity at this pointer now */
	}
	identity_measure(id, &len);
	cl = client_find(c, id, client_hash(c, id, &len), &len);
	if(cl){
		owner_bind(c, cl, id->owner);
	}
	return cl;
}


/* The client of this identity, if it has entries: through its pointer when
 * that still carries the identity it was bound with, else by hashing. */
static inline struct cache_client *client_of(struct cache *c, const struct cache_identity *id)
{
	struct cache_client *cl = id->owner ? owner_find(c, id->owner) : NULL;

	if(cl && client_is_now(cl, id)){
		return cl;
	}
	return client_by_identity(c, id, cl);
}


static struct cache_client *client_add(struct cache *c, const struct cache_identity *id, uint64_t hash,
		const struct identity_len *len)
{
	struct cache_client *cl = mosquitto_calloc(1, sizeof(*cl) + len->username + len->client_id + 2);
	struct cache_client **bucket = &c->client_buckets[hash & c->mask];

	if(cl == NULL){
		return NULL;
	}
	cl->hash = hash;
	cl->serial = c->next_serial++;
	cl->anonymous = id->username == NULL;
	cl->username_len = len->username;
	cl->client_id_len = len->client_id;
	if(len->username){
		memcpy(cl->key, id->username, len->username);
	}
	if(len->client_id){
		memcpy(cl->key + len->username + 1, id->client_id, len->client_id);
	}
	cl->hnext = *bucket;
	*bucket = cl;
	c->bytes += client_cost(len->username + len->client_id);
	owner_bind(c, cl, id->owner);
	return cl;
}


static void client_free(struct cache *c, struct cache_client *cl)
{
	struct cache_client **pp = &c->client_buckets[cl->hash & c->mask];

	while(*pp && *pp != cl){
		pp = &(*pp)->hnext;
	}
	if(*pp){
		*pp = cl->hnext;
	}
	owner_unbind(c, cl);
	c->bytes -= client_cost(cl->username_len + cl->client_id_len);
	mosquitto_free(cl);
}


/* ------------------------------------------------------------- entries */

static void entry_unlink_hash(struct cache *c, struct cache_entry *e)
{
	struct cache_entry **pp = &c->entry_buckets[e->hash & c->mask];

	while(*pp && *pp != e){
		pp = &(*pp)->hnext;
	}
	if(*pp){
		*pp = e->hnext;
	}
}


/* Scopes stay packed at the front of their array: the last one fills the gap. */
static void entry_unlink_scope(struct cache_entry *e)
{
	struct cache_entry **scopes = e->client->scopes[e->slot];
	uint8_t *n = &e->client->scope_count[e->slot];
	int i;

	for(i = 0; i < *n; i++){
		if(scopes[i] == e){
			scopes[i] = scopes[*n - 1];
			scopes[*n - 1] = NULL;
			(*n)--;
			return;
		}
	}
}


static void entry_unlink_order(struct cache *c, struct cache_entry *e)
{
	if(c->sweep_next == e){
		c->sweep_next = e->newer;
	}
	if(e->older) e->older->newer = e->newer; else c->oldest = e->newer;
	if(e->newer) e->newer->older = e->older; else c->newest = e->older;
	e->older = e->newer = NULL;
}


static void entry_link_order(struct cache *c, struct cache_entry *e)
{
	e->older = c->newest;
	e->newer = NULL;
	if(c->newest) c->newest->newer = e; else c->oldest = e;
	c->newest = e;
}


/* Frees e; frees its client too when that was its last entry, unless
 * keep_client (the caller is about to add another). */
static void entry_remove(struct cache *c, struct cache_entry *e, bool keep_client)
{
	struct cache_client *cl = e->client;

	if(e->scoped){
		entry_unlink_scope(e);
	}else{
		entry_unlink_hash(c, e);
	}
	entry_unlink_order(c, e);
	if(e->cprev) e->cprev->cnext = e->cnext; else cl->entries = e->cnext;
	if(e->cnext) e->cnext->cprev = e->cprev; else cl->oldest_entry = e->cprev;
	cl->entry_count--;
	c->count--;
	c->bytes -= entry_cost(e->text_len);
	mosquitto_free(e);
	if(cl->entry_count == 0 && !keep_client){
		client_free(c, cl);
	}
}


static struct cache_entry *entry_find(struct cache *c, const struct cache_client *cl, int slot,
		const char *topic, size_t topic_len)
{
	uint64_t hash = entry_hash(c, cl, slot, topic, topic_len);
	struct cache_entry *e;

	for(e = c->entry_buckets[hash & c->mask]; e; e = e->hnext){
		if(e->hash == hash && e->client == cl && e->slot == slot && e->text_len == topic_len
				&& memcmp(e->text, topic, topic_len) == 0){
			return e;
		}
	}
	return NULL;
}


static struct cache_entry *entry_new(struct cache *c, struct cache_client *cl, int slot, bool scoped,
		const char *text, size_t text_len)
{
	struct cache_entry *e = mosquitto_calloc(1, sizeof(*e) + text_len);

	if(e == NULL){
		return NULL;
	}
	e->client = cl;
	e->slot = (uint8_t)slot;
	e->scoped = scoped;
	e->text_len = text_len;
	memcpy(e->text, text, text_len);
	e->cnext = cl->entries;
	if(cl->entries) cl->entries->cprev = e; else cl->oldest_entry = e;
	cl->entries = e;
	cl->entry_count++;
	c->count++;
	c->bytes += entry_cost(text_len);
	return e;
}


static bool entry_usable(const struct cache_entry *e, uint64_t generation, int64_t now_ms, int64_t grace_ms)
{
	return e->generation == generation && now_ms - grace_ms < e->expires_ms;
}


/* -------------------------------------------------------------- lookup */

static inline struct cache_entry *scope_match(struct cache_client *cl, int slot, const char *topic,
		size_t topic_len, uint64_t generation, int64_t now_ms, int64_t grace_ms)
{
	int i, n = cl->scope_count[slot];

	for(i = 0; i < n; i++){
		struct cache_entry *e = cl->scopes[slot][i];

		if(entry_usable(e, generation, now_ms, grace_ms)
				&& topic_shape_matches(e->shape, e->text, e->text_len, topic, topic_len)){
			return e;
		}
	}
	return NULL;
}


enum cache_lookup cache_lookup(struct cache *c, const struct cache_identity *id, int access,
		const char *topic, size_t topic_len, uint64_t generation, int64_t now_ms,
		int64_t grace_ms, struct cache_answer *out)
{
	struct cache_client *cl;
	struct cache_entry *e;
	int slot = access_slot(access);

	if(c == NULL || c->limits.max_entries == 0 || slot < 0 || c->count == 0){
		return CACHE_MISS;
	}
	cl = client_of(c, id);
	if(cl == NULL){
		return CACHE_MISS;
	}
	e = scope_match(cl, slot, topic, topic_len, generation, now_ms, grace_ms);
	if(e == NULL){
		e = entry_find(c, cl, slot, topic, topic_len);
		if(e && !entry_usable(e, generation, now_ms, grace_ms)){
			return CACHE_MISS;
		}
	}
	if(e == NULL){
		return CACHE_MISS;
	}
	out->allow = e->allow;
	out->generation = e->generation;
	return CACHE_HIT;
}


/* --------------------------------------------------------------- store */

static struct cache_entry *scope_find(struct cache_client *cl, int slot, const char *scope, size_t len)
{
	int i;

	for(i = 0; i < cl->scope_count[slot]; i++){
		struct cache_entry *e = cl->scopes[slot][i];

		if(e->text_len == len && memcmp(e->text, scope, len) == 0){
			return e;
		}
	}
	return NULL;
}


/* Room for one more scope of cl, freeing the soonest-expiring one if all
 * are taken (cl keeps at least the entry about to be added). */
static void scope_make_room(struct cache *c, struct cache_client *cl, int slot)
{
	struct cache_entry **scopes = cl->scopes[slot];
	int i, victim = 0;

	if(cl->scope_count[slot] < CACHE_SCOPES_PER_ACCESS){
		return;
	}
	for(i = 1; i < CACHE_SCOPES_PER_ACCESS; i++){
		if(scopes[i]->expires_ms < scopes[victim]->expires_ms){
			victim = i;
		}
	}
	entry_remove(c, scopes[victim], true);
	c->evictions++;
}


static void entry_set(struct cache *c, struct cache_entry *e, const struct cache_answer *answer,
		int64_t expires_ms)
{
	e->allow = answer->allow;
	e->generation = answer->generation;
	e->expires_ms = expires_ms;
	/* a fresh answer from the daemon: now the newest entry */
	entry_unlink_order(c, e);
	entry_link_order(c, e);
}


static struct cache_entry *existing_entry(struct cache *c, const struct cache_identity *id, int slot,
		const char *text, size_t len, bool scoped)
{
	struct cache_client *cl = client_of(c, id);

	if(cl == NULL){
		return NULL;
	}
	return scoped ? scope_find(cl, slot, text, len) : entry_find(c, cl, slot, text, len);
}


/* Evicts oldest entries until `need` more bytes and one more entry fit.
 * Entries of `keep` are evicted too, but `keep` itself is not freed.
 * Says whether there is room. */
static bool make_room(struct cache *c, size_t need, struct cache_client *keep)
{
	while((c->count >= c->limits.max_entries || c->bytes + need > c->limits.max_bytes) && c->oldest){
		entry_remove(c, c->oldest, c->oldest->client == keep);
		c->evictions++;
	}
	return c->count < c->limits.max_entries && c->bytes + need <= c->limits.max_bytes;
}


/* The client to store under, within its own entry cap, or NULL. */
static struct cache_client *client_for_store(struct cache *c, const struct cache_identity *id, size_t text_len)
{
	struct identity_len len;
	uint64_t hash;
	struct cache_client *cl;
	size_t key_len;

	identity_measure(id, &len);
	hash = client_hash(c, id, &len);
	cl = client_find(c, id, hash, &len);
	key_len = len.username + len.client_id;

	if(cl != NULL && cl->entry_count >= c->limits.max_client_entries && cl->oldest_entry){
		/* One client churns its own entries, not everybody else's. */
		entry_remove(c, cl->oldest_entry, true);
		c->evictions++;
	}
	if(!make_room(c, entry_cost(text_len) + (cl ? 0 : client_cost(key_len)), cl)){
		if(cl != NULL && cl->entry_count == 0){
			client_free(c, cl);
		}
		return NULL;
	}
	if(cl == NULL){
		return client_add(c, id, hash, &len);
	}
	owner_bind(c, cl, id->owner);
	return cl;
}


void cache_store(struct cache *c, const struct cache_identity *id, int access,
		const char *topic, size_t topic_len, const char *scope, size_t scope_len,
		const struct cache_answer *answer, int64_t expires_ms)
{
	int slot = access_slot(access);
	bool scoped = scope != NULL && scope_len > 0;
	const char *text = scoped ? scope : topic;
	size_t len = scoped ? scope_len : topic_len;
	struct cache_client *cl;
	struct cache_entry *e;

	if(c == NULL || c->limits.max_entries == 0 || slot < 0 || text == NULL){
		return;
	}
	if(len > c->limits.max_text_len){
		c->not_stored++;
		return;
	}
	e = existing_entry(c, id, slot, text, len, scoped);
	if(e){
		entry_set(c, e, answer, expires_ms);
		return;
	}
	cl = client_for_store(c, id, len);
	if(cl == NULL){
		c->not_stored++;
		return;
	}
	if(scoped){
		scope_make_room(c, cl, slot);
	}
	e = entry_new(c, cl, slot, scoped, text, len);
	if(e == NULL){
		if(cl->entry_count == 0){
			client_free(c, cl);
		}
		c->not_stored++;
		return;
	}
	if(scoped){
		e->shape = topic_filter_shape(text, len);
		cl->scopes[slot][cl->scope_count[slot]++] = e;
	}else{
		struct cache_entry **bucket;

		e->hash = entry_hash(c, cl, slot, text, len);
		bucket = &c->entry_buckets[e->hash & c->mask];
		e->hnext = *bucket;
		*bucket = e;
	}
	entry_link_order(c, e);
	e->allow = answer->allow;
	e->generation = answer->generation;
	e->expires_ms = expires_ms;
}


bool cache_knows(struct cache *c, const struct cache_identity *id)
{
	if(c == NULL || c->limits.max_entries == 0 || c->count == 0){
		return false;
	}
	return client_of(c, id) != NULL;
}


/* ---------------------------------------------------------- invalidation */

void cache_drop_client(struct cache *c, const struct cache_identity *id)
{
	struct cache_client *cl;
	struct identity_len len;

	if(c == NULL || c->limits.max_entries == 0 || c->count == 0){
		return;
	}
	if(id->owner && (cl = owner_find(c, id->owner)) != NULL){
		owner_unbind(c, cl); /* whatever identity it had: this connection is over */
	}
	identity_measure(id, &len);
	cl = client_find(c, id, client_hash(c, id, &len), &len);
	while(cl && cl->entries){
		bool last = cl->entry_count == 1;

		entry_remove(c, cl->entries, false);
		if(last){
			break; /* cl was freed with its last entry */
		}
	}
}


void cache_flush_generation(struct cache *c, uint64_t generation)
{
	struct cache_entry *e, *newer;

	if(c == NULL){
		return;
	}
	for(e = c->oldest; e; e = newer){
		newer = e->newer;
		if(e->generation != generation){
			entry_remove(c, e, false);
		}
	}
}


size_t cache_sweep(struct cache *c, int64_t cutoff_ms, size_t max_visits)
{
	struct cache_entry *e, *newer;
	size_t visits = 0, freed = 0;

	if(c == NULL){
		return 0;
	}
	for(e = c->sweep_next ? c->sweep_next : c->oldest; e && visits < max_visits; e = newer){
		newer = e->newer;
		visits++;
		if(e->expires_ms <= cutoff_ms){
			entry_remove(c, e, false);
			freed++;
		}
	}
	c->sweep_next = e;
	return freed;
}


bool cache_sweep_at_start(const struct cache *c)
{
	return c == NULL || c->sweep_next == NULL;
}
