/* See auth_known.h. A chained hash table that doubles as it fills. */
#include <stdint.h>
#include <string.h>

#include <mosquitto_broker.h>

#include "auth_known.h"

#define INITIAL_BUCKETS 64

struct known {
	struct known *next;
	const void *client;
	unsigned char digest[AUTH_KNOWN_DIGEST_LEN];
	size_t client_id_len;
	char *identity;                /* after client_id in the same block */
	char client_id[];
};

struct auth_known {
	struct known **buckets;
	size_t mask;
	size_t count;
};


static size_t bucket_of(const struct auth_known *t, const void *client)
{
	uint64_t x = (uint64_t)(uintptr_t)client;

	x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
	return (size_t)x & t->mask;
}


struct auth_known *auth_known_create(void)
{
	struct auth_known *t = mosquitto_calloc(1, sizeof(*t));

	if(t == NULL){
		return NULL;
	}
	t->buckets = mosquitto_calloc(INITIAL_BUCKETS, sizeof(*t->buckets));
	if(t->buckets == NULL){
		mosquitto_free(t);
		return NULL;
	}
	t->mask = INITIAL_BUCKETS - 1;
	return t;
}


void auth_known_destroy(struct auth_known *t)
{
	size_t i;
	struct known *k, *next;

	if(t == NULL){
		return;
	}
	for(i = 0; i <= t->mask; i++){
		for(k = t->buckets[i]; k; k = next){
			next = k->next;
			mosquitto_free(k);
		}
	}
	mosquitto_free(t->buckets);
	mosquitto_free(t);
}


static struct known **find_slot(const struct auth_known *t, const void *client)
{
	struct known **pp = &t->buckets[bucket_of(t, client)];

	while(*pp && (*pp)->client != client){
		pp = &(*pp)->next;
	}
	return pp;
}


/* Doubles the table when it holds as many records as buckets (best effort). */
static void grow(struct auth_known *t)
{
	size_t old_n = t->mask + 1, i;
	struct known **old = t->buckets;
	struct known **fresh;
	struct known *k, *next;

	if(t->count < old_n || old_n > SIZE_MAX / 2 / sizeof(*fresh)){
		return;
	}
	fresh = mosquitto_calloc(old_n * 2, sizeof(*fresh));
	if(fresh == NULL){
		return;
	}
	t->buckets = fresh;
	t->mask = old_n * 2 - 1;
	for(i = 0; i < old_n; i++){
		for(k = old[i]; k; k = next){
			struct known **bucket = &t->buckets[bucket_of(t, k->client)];

			next = k->next;
			k->next = *bucket;
			*bucket = k;
		}
	}
	mosquitto_free(old);
}


bool auth_known_remember(struct auth_known *t, const void *client, const char *client_id,
		const unsigned char digest[AUTH_KNOWN_DIGEST_LEN], const char *identity)
{
	size_t id_len, ident_len;
	struct known **bucket;
	struct known *k;

	if(t == NULL || client == NULL || client_id == NULL || identity == NULL){
		return false;
	}
	auth_known_forget(t, client);
	id_len = strlen(client_id);
	ident_len = strlen(identity);
	k = mosquitto_calloc(1, sizeof(*k) + id_len + 1 + ident_len + 1);
	if(k == NULL){
		return false;
	}
	k->client = client;
	memcpy(k->digest, digest, AUTH_KNOWN_DIGEST_LEN);
	k->client_id_len = id_len;
	memcpy(k->client_id, client_id, id_len + 1);
	k->identity = k->client_id + id_len + 1;
	memcpy(k->identity, identity, ident_len + 1);
	grow(t);
	bucket = &t->buckets[bucket_of(t, client)];
	k->next = *bucket;
	*bucket = k;
	t->count++;
	return true;
}


bool auth_known_matches(const struct auth_known *t, const void *client, const char *client_id,
		const unsigned char digest[AUTH_KNOWN_DIGEST_LEN], const char *username)
{
	const struct known *k;

	if(t == NULL || client == NULL || client_id == NULL || username == NULL){
		return false;
	}
	k = *find_slot(t, client);
	return k != NULL
		&& strcmp(k->client_id, client_id) == 0
		&& strcmp(k->identity, username) == 0
		&& memcmp(k->digest, digest, AUTH_KNOWN_DIGEST_LEN) == 0;
}


void auth_known_forget(struct auth_known *t, const void *client)
{
	struct known **pp;
	struct known *k;

	if(t == NULL || client == NULL){
		return;
	}
	pp = find_slot(t, client);
	k = *pp;
	if(k != NULL){
		*pp = k->next;
		t->count--;
		mosquitto_free(k);
	}
}


size_t auth_known_count(const struct auth_known *t)
{
	return t ? t->count : 0;
}
