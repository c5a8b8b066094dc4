/*
 * Connections seen by the plugin (conn.h). A chained hash table keyed by the
 * client pointer; grows by doubling, never shrinks below its start size.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "conn.h"
#include "logging.h"

#define CONN_BUCKETS_MIN 1024

struct conn_table {
	struct conn **buckets;
	size_t n_buckets;                     /* a power of two */
	size_t count;
	size_t doomed;                        /* live records marked doomed (to kick) */
	struct conn *oldest, *newest;         /* offline records */
	size_t offline;
};


static size_t bucket_of(const struct conn_table *t, const struct mosquitto *client)
{
	uint64_t h = (uint64_t)(uintptr_t)client;

	/* Pointers are aligned and clustered: mix before masking. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)h & (t->n_buckets - 1);
}


struct conn_table *conn_table_create(void)
{
	struct conn_table *t = mosquitto_calloc(1, sizeof(*t));

	if(t == NULL){
		return NULL;
	}
	t->buckets = mosquitto_calloc(CONN_BUCKETS_MIN, sizeof(*t->buckets));
	if(t->buckets == NULL){
		mosquitto_free(t);
		return NULL;
	}
	t->n_buckets = CONN_BUCKETS_MIN;
	return t;
}


static void conn_free(struct conn *c)
{
	mosquitto_free(c->client_id);
	mosquitto_free(c->identity);
	mosquitto_free(c->der);
	mosquitto_free(c);
}


void conn_table_destroy(struct conn_table *t)
{
	struct conn *c, *next;
	size_t i;

	if(t == NULL){
		return;
	}
	for(i = 0; i < t->n_buckets; i++){
		for(c = t->buckets[i]; c != NULL; c = next){
			next = c->next;
			conn_free(c);
		}
	}
	mosquitto_free(t->buckets);
	mosquitto_free(t);
}


/* Doubles the bucket array; on failure the table keeps working, only slower. */
static void conn_grow(struct conn_table *t)
{
	size_t n = t->n_buckets * 2, i, b;
	struct conn **buckets = mosquitto_calloc(n, sizeof(*buckets));
	struct conn *c, *next;
	struct conn_table grown = {.buckets = buckets, .n_buckets = n};

	if(buckets == NULL){
		return;
	}
	for(i = 0; i < t->n_buckets; i++){
		for(c = t->buckets[i]; c != NULL; c = next){
			next = c->next;
			b = bucket_of(&grown, c->client);
			c->next = buckets[b];
			buckets[b] = c;
		}
	}
	mosquitto_free(t->buckets);
	t->buckets = buckets;
	t->n_buckets = n;
}


static struct conn **slot_of(struct conn_table *t, const struct mosquitto *client)
{
	struct conn **p = &t->buckets[bucket_of(t, client)];

	while(*p != NULL && (*p)->client != client){
		p = &(*p)->next;
	}
	return p;
}


static void offline_unlink(struct conn_table *t, struct conn *c)
{
	if(c->older != NULL){
		c->older->newer = c->newer;
	}else{
		t->oldest = c->newer;
	}
	if(c->newer != NULL){
		c->newer->older = c->older;
	}else{
		t->newest = c->older;
	}
	c->older = c->newer = NULL;
	t->offline--;
}


static void unlink_slot(struct conn_table *t, struct conn **p)
{
	struct conn *c = *p;

	*p = c->next;
	if(c->offline){
		offline_unlink(t, c);
	}else if(c->doomed){
		t->doomed--;
	}
	t->count--;
	conn_free(c);
}


void conn_drop(struct conn_table *t, const struct mosquitto *client)
{
	struct conn **p;

	if(t == NULL || client == NULL){
		return;
	}
	p = slot_of(t, client);
	if(*p != NULL){
		unlink_slot(t, p);
	}
}


struct conn *conn_find(struct conn_table *t, const struct mosquitto *client)
{
	struct conn **p;
	const char *id;

	if(t == NULL || client == NULL){
		return NULL;
	}
	p = slot_of(t, client);
	if(*p == NULL){
		return NULL;
	}
	id = mosquitto_client_id(client);
	if(id == NULL || strcmp(id, (*p)->client_id) != 0){
		unlink_slot(t, p); /* a pointer reused without a DISCONNECT we saw: never trust it */
		return NULL;
	}
	return *p;
}


bool conn_set_authenticated(struct conn *c, const char *identity, bool by_password)
{
	char *copy = identity != NULL ? mosquitto_strdup(identity) : NULL;

	if(identity != NULL && copy == NULL){
		return false;
	}
	mosquitto_free(c->identity);
	c->identity = copy;
	c->authenticated = true;
	c->password_verified = by_password;
	return true;
}


struct conn *conn_authenticated_as(struct conn_table *t, const struct mosquitto *client, const char *username)
{
	struct conn *c = conn_find(t, client);

	if(c == NULL || c->offline || !c->authenticated || c->identity == NULL || username == NULL
			|| strcmp(c->identity, username) != 0){
		return NULL;
	}
	return c;
}


static void certificate_facts(struct conn *c, X509 *cert)
{
	const ASN1_INTEGER *serial = X509_get0_serialNumber(cert);
	unsigned char *der = NULL;
	unsigned int len = 0;
	int n;

	c->has_certificate = true; /* whatever follows: it had one, so its will is never "no certificate" */
	n = i2d_X509(cert, &der);
	if(n > 0 && n <= CONN_DER_MAX){
		c->der = mosquitto_calloc(1, (size_t)n);
		if(c->der != NULL){
			memcpy(c->der, der, (size_t)n);
			c->der_len = (size_t)n;
		}
	}
	OPENSSL_free(der);
	if(X509_digest(cert, EVP_sha256(), c->sha256, &len) != 1 || len != sizeof(c->sha256)){
		return; /* no facts: revocation by the Watch stream cannot match it, checks still do */
	}
	n = serial != NULL ? ASN1_STRING_length(serial) : 0;
	if(n > 0){
		const unsigned char *data = ASN1_STRING_get0_data(serial);
		while(n > 1 && data[0] == 0){
			data++;
			n--;
		}
		c->serial_len = (uint8_t)(n > CONN_SERIAL_MAX ? CONN_SERIAL_MAX : n);
		memcpy(c->serial, data, c->serial_len);
	}
}


struct conn *conn_track(struct conn_table *t, const struct mosquitto *client, void *cert)
{
	struct conn *c;
	const char *id;
	size_t b;

	if(t == NULL || client == NULL){
		return NULL;
	}
	c = conn_find(t, client);
	if(c != NULL && !(c->offline && cert != NULL)){
		return c;
	}
	if(c != NULL){
		conn_drop(t, client); /* a new connection at the same pointer and client id */
	}
	id = mosquitto_client_id(client);
	if(id == NULL){
		return NULL;
	}
	c = mosquitto_calloc(1, sizeof(*c));
	if(c == NULL){
		return NULL;
	}
	c->client_id = mosquitto_strdup(id);
	if(c->client_id == NULL){
		mosquitto_free(c);
		return NULL;
	}
	c->client = client;
	c->has_username = mosquitto_client_username(client) != NULL;
	if(cert != NULL){
		certificate_facts(c, cert);
	}
	if(t->count >= t->n_buckets * 2){
		conn_grow(t);
	}
	b = bucket_of(t, client);
	c->next = t->buckets[b];
	t->buckets[b] = c;
	t->count++;
	return c;
}


size_t conn_doom(struct conn_table *t, struct conn *c)
{
	if(t == NULL || c == NULL || c->doomed){
		return 0;
	}
	c->doomed = true;
	if(c->offline){
		return 0; /* nothing to kick: its will is refused */
	}
	t->doomed++;
	return 1;
}


static int name_cmp(const void *key, const void *member)
{
	return strcmp((const char *)key, *(char *const *)member);
}


size_t conn_doom_usernames(struct conn_table *t, char *const *names, size_t n, bool *matched)
{
	struct conn *c;
	const char *username;
	char *const *hit;
	size_t i, marked = 0;

	if(t == NULL || n == 0){
		return 0;
	}
	for(i = 0; i < t->n_buckets; i++){
		for(c = t->buckets[i]; c != NULL; c = c->next){
			if(c->offline || c->doomed || !c->has_username){
				continue;
			}
			username = mosquitto_client_username(c->client);
			hit = username != NULL ? bsearch(username, names, n, sizeof(*names), name_cmp) : NULL;
			if(hit != NULL){
				matched[hit - names] = true;
				marked += conn_doom(t, c);
			}
		}
	}
	return marked;
}


void conn_set_offline(struct conn_table *t, const struct mosquitto *client, int64_t now_ms)
{
	struct conn *c = conn_find(t, client);

	if(c == NULL || c->offline){
		return;
	}
	if(c->doomed){
		t->doomed--;
	}
	c->offline = true;
	c->offline_since_ms = now_ms;
	c->older = t->newest;
	c->newer = NULL;
	if(t->newest != NULL){
		t->newest->newer = c;
	}else{
		t->oldest = c;
	}
	t->newest = c;
	t->offline++;
}


void conn_sweep(struct conn_table *t, int64_t now_ms)
{
	struct conn *c;

	if(t == NULL){
		return;
	}
	while((c = t->oldest) != NULL
			&& (t->offline > CONN_OFFLINE_MAX || now_ms - c->offline_since_ms > CONN_OFFLINE_KEEP_MS)){
		conn_drop(t, c->client);
	}
}


struct conn_revocations *conn_revocations_create(void)
{
	return calloc(1, sizeof(struct conn_revocations));
}


void conn_revocations_free(struct conn_revocations *r)
{
	if(r != NULL){
		free(r->sha256);
		free(r->serials);
		free(r);
	}
}


/* Grows an array of `size`-byte items by doubling; false when full or out of memory. */
static bool grow(void **items, size_t *cap, size_t n, size_t size)
{
	size_t want = *cap ? *cap * 2 : 64;
	void *more;

	if(n < *cap){
		return true;
	}
	if(n >= CONN_REVOCATIONS_MAX){
		return false;
	}
	more = realloc(*items, want * size);
	if(more == NULL){
		return false;
	}
	*items = more;
	*cap = want;
	return true;
}


bool conn_revocations_add_sha256(struct conn_revocations *r, const unsigned char *data, size_t len)
{
	if(len != 32 || !grow((void **)&r->sha256, &r->cap_sha256, r->n_sha256, sizeof(*r->sha256))){
		return false;
	}
	memcpy(r->sha256[r->n_sha256++], data, 32);
	return true;
}


bool conn_revocations_add_serial(struct conn_revocations *r, const unsigned char *data, size_t len)
{
	unsigned char *item;

	while(len > 1 && data[0] == 0){
		data++;
		len--;
	}
	if(len == 0 || len > CONN_SERIAL_MAX
			|| !grow((void **)&r->serials, &r->cap_serials, r->n_serials, sizeof(*r->serials))){
		return false;
	}
	item = r->serials[r->n_serials++];
	memset(item, 0, sizeof(*r->serials));
	item[0] = (unsigned char)len;
	memcpy(item + 1, data, len);
	return true;
}


static int cmp_sha256(const void *a, const void *b)
{
	return memcmp(a, b, 32);
}


static int cmp_serial(const void *a, const void *b)
{
	return memcmp(a, b, CONN_SERIAL_MAX + 1);
}


void conn_revocations_sort(struct conn_revocations *r)
{
	if(r->n_sha256 > 1){
		qsort(r->sha256, r->n_sha256, sizeof(*r->sha256), cmp_sha256);
	}
	if(r->n_serials > 1){
		qsort(r->serials, r->n_serials, sizeof(*r->serials), cmp_serial);
	}
}


static bool revoked_by(const struct conn *c, const struct conn_revocations *r)
{
	unsigned char serial[CONN_SERIAL_MAX + 1] = {0};

	if(!c->has_certificate){
		return false;
	}
	if(r->n_sha256 > 0 && bsearch(c->sha256, r->sha256, r->n_sha256, sizeof(*r->sha256), cmp_sha256)){
		return true;
	}
	if(r->n_serials == 0 || c->serial_len == 0){
		return false;
	}
	serial[0] = c->serial_len;
	memcpy(serial + 1, c->serial, c->serial_len);
	return bsearch(serial, r->serials, r->n_serials, sizeof(*r->serials), cmp_serial) != NULL;
}


size_t conn_doom_revoked(struct conn_table *t, const struct conn_revocations *r)
{
	struct conn *c;
	size_t i, n = 0;

	if(t == NULL || r == NULL || (r->n_serials == 0 && r->n_sha256 == 0)){
		return 0;
	}
	for(i = 0; i < t->n_buckets; i++){
		for(c = t->buckets[i]; c != NULL; c = c->next){
			if(revoked_by(c, r)){
				n += conn_doom(t, c);
			}
		}
	}
	return n;
}


size_t conn_doom_class(struct conn_table *t, bool named)
{
	struct conn *c;
	size_t i, n = 0;

	if(t == NULL){
		return 0;
	}
	for(i = 0; i < t->n_buckets; i++){
		for(c = t->buckets[i]; c != NULL; c = c->next){
			if(c->has_username == named && !c->offline){
				n += conn_doom(t, c);
			}
		}
	}
	return n;
}


bool conn_has_doomed(const struct conn_table *t)
{
	return t != NULL && t->doomed > 0;
}


size_t conn_kick_doomed(struct conn_table *t, size_t max, int64_t deadline_ms, size_t *failed)
{
	struct conn **p;
	size_t i, kicked = 0;

	*failed = 0;
	if(t == NULL || t->doomed == 0){
		return 0;
	}
	for(i = 0; i < t->n_buckets && kicked < max && t->doomed > 0; i++){
		p = &t->buckets[i];
		/* A kick costs the broker a disconnect; stop at the deadline, go on next TICK. */
		if(kicked > 0 && monotonic_ms() >= deadline_ms){
			break;
		}
		while(*p != NULL && kicked < max){
			if(!(*p)->doomed || (*p)->offline){
				p = &(*p)->next;
				continue;
			}
			/* The record goes first: the kick's own DISCONNECT event finds nothing to drop. */
			char *id = (*p)->client_id;
			(*p)->client_id = NULL;
			unlink_slot(t, p);
			if(mosquitto_kick_client_by_clientid(id, false) != MOSQ_ERR_SUCCESS){
				(*failed)++;
			}
			mosquitto_free(id);
			kicked++;
		}
	}
	return kicked;
}


size_t conn_count(const struct conn_table *t)
{
	return t != NULL ? t->count : 0;
}


size_t conn_offline_count(const struct conn_table *t)
{
	return t != NULL ? t->offline : 0;
}


size_t conn_doomed_count(const struct conn_table *t)
{
	return t != NULL ? t->doomed : 0;
}
