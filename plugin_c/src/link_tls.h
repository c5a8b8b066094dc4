/*
 * Mutual TLS between the plugin and policyd over TCP (docs/identity.md):
 * auth_opt_policyd_tls_ca / _tls_cert / _tls_key, all three or none.
 * The PEM files are read once at init (after Mosquitto dropped to its user,
 * so that user must be able to read them); both gRPC channels (checks and
 * the Watch stream) use the same credentials.
 */
#ifndef POLICYD_LINK_TLS_H
#define POLICYD_LINK_TLS_H

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

struct link_tls {
	char *ca_pem;      /* NULL: plaintext (unix socket or loopback TCP) */
	char *cert_pem;
	char *key_pem;
};

/* Reads the files named by the options (any may be NULL; all three or none).
 * Returns NULL on success, else a static description of what is wrong;
 * `path_out` then names the file concerned (or NULL). */
const char *link_tls_load(struct link_tls *tls, const char *ca, const char *cert, const char *key,
		const char **path_out);

/* New channel credentials: mutual TLS if loaded, else insecure. Caller releases. */
grpc_channel_credentials *link_tls_credentials(const struct link_tls *tls);

int link_tls_enabled(const struct link_tls *tls);

/* An unanswered keepalive ping fails the connection after this long. */
#define LINK_KEEPALIVE_TIMEOUT_MS 3000

/* A channel to policyd with the plugin's settings (fail fast, quick reconnect,
 * no proxy, its own connection, a keepalive ping every keepalive_ms),
 * refusing answers over max_receive_bytes. Both of the plugin's channels
 * (checks, Watch stream) are made here. */
grpc_channel *link_channel_create(const char *target, const struct link_tls *tls, int max_receive_bytes,
		int keepalive_ms);

/* Frees the PEM contents (the key's bytes are cleared first). NULL allowed. */
void link_tls_free(struct link_tls *tls);

#endif
