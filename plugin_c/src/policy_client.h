/*
 * Synchronous gRPC client for policyd.v1.Policy/CheckAcl (gRPC C core),
 * plus fire-and-forget ReportStats calls reaped by its background thread.
 *
 * Knows nothing about Mosquitto: no broker calls, no logging. Not thread
 * safe: one client is used from one thread (the broker's main thread).
 */
#ifndef POLICYD_POLICY_CLIENT_H
#define POLICYD_POLICY_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

/* Values of policyd.v1.Access (identical to Mosquitto's MOSQ_ACL_*). */
enum policy_access {
	POLICY_ACCESS_READ = 1,
	POLICY_ACCESS_WRITE = 2,
	POLICY_ACCESS_SUBSCRIBE = 4,
	POLICY_ACCESS_UNSUBSCRIBE = 8,
};

enum policy_outcome {
	POLICY_ALLOW = 1,
	POLICY_DENY = 2,    /* the daemon answered RESULT_DENY */
	POLICY_ERROR = 3,   /* no usable answer; see policy_error */
};

enum policy_error {
	POLICY_ERR_NONE = 0,
	POLICY_ERR_UNAVAILABLE,  /* daemon not reachable (gRPC UNAVAILABLE) */
	POLICY_ERR_DEADLINE,     /* no answer within timeout_ms */
	POLICY_ERR_STATUS,       /* any other non-OK gRPC status */
	POLICY_ERR_PROTOCOL,     /* OK status but missing/undecodable message or unknown result */
	POLICY_ERR_INTERNAL,     /* local failure: allocation, encoding, call setup */
	POLICY_ERR__COUNT
};

struct policy_client_options {
	const char *target;      /* gRPC target, e.g. "unix:/run/policyd/policyd.sock" */
	int timeout_ms;          /* deadline of each call, > 0 */
	const struct link_tls *tls;  /* NULL or not loaded: plaintext (link_tls.h) */
	int keepalive_ms;        /* HTTP/2 keepalive ping interval, > 0 */
};

/* How the checked client's username was verified (policyd.v1.Provenance). */
enum policy_provenance {
	POLICY_PROVENANCE_BROKER = 3,        /* no certificate: anonymous, or the broker's own verification */
	POLICY_PROVENANCE_CERTIFICATE = 1,   /* certificate_der travels with the check */
	POLICY_PROVENANCE_PASSWORD = 2,      /* policyd verified the password at CONNECT */
	POLICY_PROVENANCE_UNKNOWN = 4,       /* not a live connection (a retained message's publisher) */
};

struct policy_check_request {
	const char *username;    /* NULL: anonymous client (has_username = false) */
	size_t username_len;
	const char *client_id;
	size_t client_id_len;
	const char *topic;
	size_t topic_len;
	enum policy_access access;
	enum policy_provenance provenance;
	const unsigned char *certificate_der;  /* with POLICY_PROVENANCE_CERTIFICATE */
	size_t certificate_der_len;
	bool identity_by_daemon;               /* identity mode: policyd mapped the certificate */
	bool want_scopes;                      /* ask for the client's other allows (more_scopes) */
};

#define POLICY_RULE_MAX 128
/* Longer cache scopes are ignored (the answer is then cached per topic). */
#define POLICY_SCOPE_MAX 512
#define POLICY_DETAIL_MAX 160
/* Scopes sent ahead (more_scopes) kept from one response, and their bytes;
 * the rest are dropped (they only save calls). The daemon sends at most 8
 * per access. */
#define POLICY_MORE_SCOPES_MAX 24
#define POLICY_MORE_SCOPES_BYTES 2048

/* An allow sent ahead (ScopeGrant): under a filter for READ or WRITE, or
 * for SUBSCRIBE to exactly that filter. */
struct policy_scope_grant {
	enum policy_access access;
	uint16_t offset, len;             /* in text; not NUL-terminated */
};

struct policy_grants {
	size_t n;
	struct policy_scope_grant grant[POLICY_MORE_SCOPES_MAX];
	char text[POLICY_MORE_SCOPES_BYTES];
};

struct policy_check_result {
	enum policy_outcome outcome;
	enum policy_error error;          /* POLICY_ERR_NONE unless outcome == POLICY_ERROR */
	int grpc_status;                  /* grpc_status_code of the call (0 = OK) */
	uint64_t generation;              /* from the response; 0 on error */
	uint32_t cache_ttl_ms;            /* from the response; 0 on error */
	char rule[POLICY_RULE_MAX];       /* deciding rule, NUL-terminated, may be truncated; untrusted text */
	char detail[POLICY_DETAIL_MAX];   /* on error: what went wrong; untrusted text (may come from the daemon) */
	bool disconnect;                  /* the daemon says this connection must end */
	size_t cache_scope_len;           /* 0: the answer holds for this topic only */
	char cache_scope[POLICY_SCOPE_MAX]; /* topic filter the answer holds for (not NUL-terminated) */
	struct policy_grants more;        /* scopes sent ahead; none with disconnect */
};

/* Mirrors policyd.v1.ShimStats. */
struct policy_shim_stats {
	const char *broker_id;
	uint64_t checks, allowed, denied, errors;
	uint64_t cache_hits, cache_misses, cache_entries, cache_bytes;
	uint64_t stale_served, breaker_opens;
	int breaker_open;
	int tick_missing;
	const uint32_t *round_trip_bounds_us;   /* n_round_trip_bounds, increasing */
	const uint64_t *round_trip_counts;      /* n_round_trip_bounds + 1 */
	size_t n_round_trip_bounds;
	uint64_t round_trip_sum_us;
};

/* Identity mode: one client asking to CONNECT (policyd.v1.AuthenticateRequest).
 * The password is sent only for a client without a certificate, and only
 * over a unix socket (auth.c decides); never logged or cached. */
struct policy_auth_request {
	const char *client_id;
	size_t client_id_len;
	const char *username;        /* NULL: none in CONNECT */
	size_t username_len;
	int has_password;
	const char *password;        /* NULL: not sent (see above) */
	size_t password_len;
	const unsigned char *certificate_der;  /* NULL: no client certificate */
	size_t certificate_der_len;
	const char *peer_address;    /* NULL allowed */
	bool want_scopes;            /* the shim caches: send the scopes of an accepted identity */
};

#define POLICY_IDENTITY_MAX 257  /* identities are at most 256 bytes (policyd.identity) */

struct policy_auth_result {
	enum policy_outcome outcome;      /* anything but POLICY_ALLOW refuses the CONNECT */
	enum policy_error error;          /* POLICY_ERR_NONE unless outcome == POLICY_ERROR */
	int grpc_status;
	uint64_t generation;
	char username[POLICY_IDENTITY_MAX]; /* on allow: the identity, NUL-terminated, non-empty */
	uint32_t cache_ttl_ms;            /* for `scopes` */
	struct policy_grants scopes;      /* on allow, with want_scopes: its first checks' answers */
	char detail[POLICY_DETAIL_MAX];   /* deny reason or error; untrusted text */
};

struct policy_client;

/* Calls grpc_init(), creates the channel and the completion queue and starts
 * connecting (without waiting). Returns NULL on failure and, if errmsg is not
 * NULL, sets it to a static description. */
struct policy_client *policy_client_create(const struct policy_client_options *opts, const char **errmsg);

/* Releases everything and calls grpc_shutdown(). NULL is allowed. */
void policy_client_destroy(struct policy_client *client);

/* Decodes a serialized CheckAclResponse into *result (anything malformed or
 * with an unknown result value becomes POLICY_ERROR / POLICY_ERR_PROTOCOL).
 * Pure: used by policy_client_check() and by the fuzz targets in fuzz/. */
void policy_response_decode(const uint8_t *data, size_t len, struct policy_check_result *result);

/* One unary CheckAcl call, bounded by timeout_ms (plus a small margin).
 * Always fills *result; anything but POLICY_ALLOW must be treated as deny. */
void policy_client_check(struct policy_client *client,
		const struct policy_check_request *request,
		struct policy_check_result *result);

/* One unary Authenticate call, same deadline as a check. Always fills
 * *result; anything but POLICY_ALLOW must refuse the connection. */
void policy_client_authenticate(struct policy_client *client,
		const struct policy_auth_request *request,
		struct policy_auth_result *result);

/* Starts one ReportStats call and returns without waiting; the client's
 * background thread reaps it. Returns 0 when sent, -1 when skipped because
 * the previous report is still in flight, or the call could not start. */
int policy_client_report_stats(struct policy_client *client, const struct policy_shim_stats *stats);

/* Short stable names ("unavailable", "deadline", ...) for logs and stats. */
const char *policy_error_name(enum policy_error error);
/* The daemon gave no answer in time (unreachable, deadline): the errors a
 * retry or a stale answer may stand in for; the others are answers gone wrong. */
bool policy_error_is_no_answer(enum policy_error error);

#endif
