/*
 * Connections the plugin authenticated at CONNECT (identity mode), keyed by
 * the broker's client pointer: the certificate's SHA-256 and the identity
 * set as username. A broker SIGHUP (2.0) re-runs BASIC_AUTH for every
 * connected client; a connection that presents the same certificate and
 * still carries the identity set for it is answered from here, without a
 * call to the daemon, so a reload during a daemon outage disconnects nobody.
 * Revocation does not depend on this: it kicks through the Watch stream.
 *
 * Main thread only. One record per connected client, dropped at its
 * DISCONNECT; memory from the broker's allocator.
 */
#ifndef POLICYD_AUTH_KNOWN_H
#define POLICYD_AUTH_KNOWN_H

#include <stdbool.h>
#include <stddef.h>

#define AUTH_KNOWN_DIGEST_LEN 32

struct auth_known;

struct auth_known *auth_known_create(void);
void auth_known_destroy(struct auth_known *t);

/* Records (or replaces) what this client was authenticated with.
 * Returns false when out of memory (then nothing is recorded). */
bool auth_known_remember(struct auth_known *t, const void *client, const char *client_id,
		const unsigned char digest[AUTH_KNOWN_DIGEST_LEN], const char *identity);

/* Is this the client, client id, certificate and identity recorded? */
bool auth_known_matches(const struct auth_known *t, const void *client, const char *client_id,
		const unsigned char digest[AUTH_KNOWN_DIGEST_LEN], const char *username);

void auth_known_forget(struct auth_known *t, const void *client);
size_t auth_known_count(const struct auth_known *t);

#endif
