/*
 * Plugin options. Mosquitto passes `auth_opt_<key> <value>` lines with the
 * `auth_opt_` prefix stripped. Every key starting with "policyd_" must be
 * one of ours (a typo fails init); other keys are left to other plugins.
 */
#ifndef POLICYD_CONFIG_H
#define POLICYD_CONFIG_H

#include <mosquitto_plugin.h>

#define CONFIG_KEY_PREFIX "policyd_"

#define CONFIG_TIMEOUT_MS_DEFAULT 100
#define CONFIG_TIMEOUT_MS_MIN 1
#define CONFIG_TIMEOUT_MS_MAX 60000

#define CONFIG_CACHE_SIZE_DEFAULT 100000
#define CONFIG_CACHE_BYTES_DEFAULT (64 * 1024 * 1024)
#define CONFIG_CACHE_BYTES_MIN (64 * 1024)
#define CONFIG_CACHE_CLIENT_ENTRIES_DEFAULT 1000
/* Topics and filters longer than this are asked every time, never cached:
 * real topics are far shorter, and one long entry costs as much as hundreds. */
#define CONFIG_CACHE_TEXT_MAX 1024
#define CONFIG_STALE_MAX_AGE_S_DEFAULT 300
/* HTTP/2 keepalive pings on both channels: a link that silently drops
 * packets (a NAT that forgot the flow) is noticed within about this plus
 * LINK_KEEPALIVE_TIMEOUT_MS. policyd accepts pings this often (1 s). */
#define CONFIG_KEEPALIVE_S_DEFAULT 10
#define CONFIG_KEEPALIVE_S_MIN 1
#define CONFIG_CACHE_TTL_S_DEFAULT 60
#define CONFIG_STATS_INTERVAL_S_DEFAULT 60
#define CONFIG_BREAKER_THRESHOLD_DEFAULT 3
#define CONFIG_BREAKER_COOLDOWN_MS_DEFAULT 1000

/* policyd_on_error: what a check gets when the daemon gives no answer. */
enum config_on_error {
	ON_ERROR_DENY = 0,   /* deny (default) */
	ON_ERROR_STALE = 1,  /* an expired cached answer of the current generation, else deny */
};

/* policyd_identity: who decides a client's identity at CONNECT. */
enum config_identity {
	IDENTITY_OFF = 0,    /* the broker (use_identity_as_username), no CONNECT check (default) */
	IDENTITY_CERT = 1,   /* policyd's Authenticate, from the client certificate (docs/identity.md) */
};

struct policyd_config {
	char *address;      /* policyd_address: gRPC target, required */
	int timeout_ms;     /* policyd_timeout_ms: per-check deadline */
	int cache_size;     /* policyd_cache_size: decision cache entries, 0 = off */
	int cache_ttl_s;    /* policyd_cache_ttl_s: cap on the daemon's cache_ttl_ms */
	int cache_bytes;    /* policyd_cache_bytes: byte budget of the decision cache */
	int cache_client_entries; /* policyd_cache_client_entries: entries one client may hold */
	int stale_max_age_s;      /* policyd_stale_max_age_s: on_error stale serves answers expired at most this long */
	int on_error;       /* policyd_on_error: enum config_on_error */
	int stats_interval_s;    /* policyd_stats_interval_s: log + report counters, 0 = never */
	int breaker_threshold;   /* policyd_breaker_threshold: deadline misses in a row that open it */
	int breaker_cooldown_ms; /* policyd_breaker_cooldown_ms: open this long before a probe */
	char *broker_id;    /* policyd_broker_id: name in ShimStats (default: host name) */
	int identity;       /* policyd_identity: enum config_identity */
	int insecure_plaintext; /* policyd_insecure_plaintext: allow plaintext to a non-local address */
	int keepalive_s;    /* policyd_keepalive_s: HTTP/2 ping interval on both channels */
	char *tls_ca;       /* policyd_tls_ca / _tls_cert / _tls_key: mutual TLS to policyd (link_tls.h) */
	char *tls_cert;
	char *tls_key;
};

/* Fills cfg (defaults, then options). Logs one line per problem and returns
 * MOSQ_ERR_SUCCESS, MOSQ_ERR_INVAL or MOSQ_ERR_NOMEM. On failure cfg holds
 * nothing that needs freeing. */
int config_parse(struct policyd_config *cfg, const struct mosquitto_opt *opts, int opt_count);

void config_free(struct policyd_config *cfg);

#endif
