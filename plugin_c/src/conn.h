/*
 * The connections the plugin has seen, keyed by the broker's client pointer:
 * what each one was verified by, and the certificate facts that revocation
 * needs. Main thread only (checks, BASIC_AUTH, DISCONNECT and TICK all run
 * there); memory comes from the broker's allocator, so `memory_limit` and
 * $SYS heap figures count it.
 *
 * Why here and not in the daemon: the daemon keeps no per-session state, so
 * that any daemon (after a restart, or one of several behind a target)
 * answers every check the same way. The broker holds the sessions; this
 * table is what lets it disconnect the ones a new policy revokes.
 *
 * A record is created at a client's first uncached check, or when BASIC_AUTH
 * accepts it (then it also holds the identity it was accepted with, so a
 * re-authentication of the same connection needs no call). At DISCONNECT it goes offline but stays:
 * Mosquitto checks the client's will after the TLS session is closed, and the
 * will must be decided with the certificate the client connected with (a
 * revoked or quarantined device's will is refused like its publishes).
 * Offline records are freed by conn_sweep() after CONN_OFFLINE_KEEP_MS, oldest
 * first beyond CONN_OFFLINE_MAX. A record whose client id no longer matches
 * its client is stale (a reused pointer) and is replaced, never trusted; an
 * offline record is replaced when the client shows a live certificate again.
 */
#ifndef POLICYD_CONN_H
#define POLICYD_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mosquitto.h>

#define CONN_SERIAL_MAX 32   /* RFC 5280 allows 20 octets; longer ones are kept truncated */
#define CONN_DER_MAX (16 * 1024)           /* larger certificates are not kept (their wills: unknown) */
#define CONN_OFFLINE_KEEP_MS (15 * 60 * 1000) /* covers will delay intervals up to 15 min */
#define CONN_OFFLINE_MAX 16384

struct conn {
	const struct mosquitto *client;
	char *client_id;                      /* for kicks by client id */
	bool has_username;
	bool password_verified;               /* policyd verified its password at CONNECT */
	bool authenticated;                   /* this plugin accepted its CONNECT (BASIC_AUTH) */
	char *identity;                       /* the username it was accepted with, or NULL */
	bool has_certificate;
	bool doomed;                          /* refused: disconnected at the next TICK, every check denied */
	bool offline;                         /* DISCONNECT seen; kept for its will */
	int64_t offline_since_ms;
	unsigned char *der;                   /* the certificate (DER), or NULL */
	size_t der_len;
	uint8_t serial_len;
	unsigned char serial[CONN_SERIAL_MAX];  /* unsigned big-endian, no leading zeros */
	unsigned char sha256[32];             /* of the certificate's DER */
	struct conn *next;                    /* bucket chain */
	struct conn *older, *newer;           /* offline records, in the order they went offline */
};

struct conn_table;

/* A certificate revocation list, as the Watch stream delivers it: built on
 * the watch thread (libc allocator: the broker's is not thread-safe), sorted,
 * then matched on the main thread in O(log n) per connection. */
struct conn_revocations {
	unsigned char (*sha256)[32];
	size_t n_sha256, cap_sha256;
	unsigned char (*serials)[CONN_SERIAL_MAX + 1];  /* [0]: length, then the bytes, zero-padded */
	size_t n_serials, cap_serials;
};

#define CONN_REVOCATIONS_MAX 200000     /* entries; the daemon refuses lists over 100,000 */

struct conn_revocations *conn_revocations_create(void);
/* false when the entry is malformed or the list is full (the list is then unusable) */
bool conn_revocations_add_sha256(struct conn_revocations *r, const unsigned char *data, size_t len);
bool conn_revocations_add_serial(struct conn_revocations *r, const unsigned char *data, size_t len);
void conn_revocations_sort(struct conn_revocations *r);
void conn_revocations_free(struct conn_revocations *r);

struct conn_table *conn_table_create(void);
void conn_table_destroy(struct conn_table *t);

/* The record of this client, created if needed (or replaced, when it is
 * offline and `cert` is given). `cert` (an X509 *, may be NULL) fills the
 * certificate facts and DER of a new record. NULL only when out of memory or
 * the client has no client id. */
struct conn *conn_track(struct conn_table *t, const struct mosquitto *client, void *cert);
/* DISCONNECT: the record goes offline (no more kicks for it), kept for the will. */
void conn_set_offline(struct conn_table *t, const struct mosquitto *client, int64_t now_ms);
/* TICK: frees offline records past CONN_OFFLINE_KEEP_MS, or beyond CONN_OFFLINE_MAX. */
void conn_sweep(struct conn_table *t, int64_t now_ms);
/* BASIC_AUTH accepted this client as `identity`: a later re-authentication
 * of the same live connection (a broker SIGHUP re-runs BASIC_AUTH) is
 * recognised by conn_authenticated_as(). False when out of memory. */
bool conn_set_authenticated(struct conn *c, const char *identity, bool by_password);
/* The live record of a connection this plugin accepted as `username`, or NULL. */
struct conn *conn_authenticated_as(struct conn_table *t, const struct mosquitto *client, const char *username);
/* The record of this client, or NULL. */
struct conn *conn_find(struct conn_table *t, const struct mosquitto *client);
void conn_drop(struct conn_table *t, const struct mosquitto *client);

/* Marks as refused (live ones are disconnected at the next TICK; an offline
 * one's will is refused): one client; every client whose certificate a
 * revocation list names; every live client with (or without) a username.
 * Returns how many live clients were newly marked. */
size_t conn_doom(struct conn_table *t, struct conn *c);
size_t conn_doom_revoked(struct conn_table *t, const struct conn_revocations *sorted);
size_t conn_doom_class(struct conn_table *t, bool named);
/* Marks every live client whose username is in `names` (sorted by strcmp,
 * no duplicates): one pass over the table, whatever the number of names.
 * matched[i] is set when some record had names[i] (others are left alone). */
size_t conn_doom_usernames(struct conn_table *t, char *const *names, size_t n, bool *matched);

/* Disconnects up to `max` marked clients (by client id), and no more once
 * monotonic_ms() reaches deadline_ms; returns how many kicks were
 * attempted, with *failed the broker's refusals. */
/* Whether any connection is marked and not yet kicked (cheap: every TICK asks). */
bool conn_has_doomed(const struct conn_table *t);
size_t conn_kick_doomed(struct conn_table *t, size_t max, int64_t deadline_ms, size_t *failed);

size_t conn_count(const struct conn_table *t);
size_t conn_offline_count(const struct conn_table *t);
size_t conn_doomed_count(const struct conn_table *t);

#endif
