/*
 * Identity mode (auth_opt_policyd_identity cert): at CONNECT the client's
 * certificate goes to policyd's Authenticate; its answer decides whether the
 * client may connect and which identity it gets as username. docs/identity.md.
 */
#ifndef POLICYD_AUTH_H
#define POLICYD_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#include "logging.h"
#include "policy_client.h"

struct policyd_plugin;
struct mosquitto;

struct policyd_auth {
	uint64_t allowed;                     /* CONNECTs accepted, username set */
	uint64_t denied;                      /* refused by policyd (RESULT_DENY) */
	uint64_t rejected;                    /* refused locally: no certificate, set_username failed */
	uint64_t errors[POLICY_ERR__COUNT];   /* refused as retryable: no usable answer, by kind */
	uint64_t breaker_refused;             /* refused as retryable without asking: breaker open */
	uint64_t reauth_known;                /* re-authentications by certificate, answered without asking */
	uint64_t reauth_asked;                /* password re-authentications policyd confirmed */
	uint64_t reauth_kept;                 /* password re-authentications kept: no answer came */
	uint64_t reauth_offline;              /* re-authentications of offline sessions, left alone */
	struct log_limiter denied_log;
	struct log_limiter rejected_log;
	struct log_limiter error_log;
};

void auth_init(struct policyd_auth *auth);

/* MOSQ_EVT_BASIC_AUTH callback; userdata is the struct policyd_plugin.
 * MOSQ_ERR_SUCCESS only when policyd allowed and the username was set (or
 * it is a re-authentication of that same connection and certificate);
 * MOSQ_ERR_AUTH (CONNACK "not authorized") when policyd denied or the client
 * cannot be asked about; a retryable refusal when no answer came. */
int auth_basic_callback(int event, void *event_data, void *userdata);

/* policyd's answer to a CONNECT: MOSQ_ERR_SUCCESS on allow; otherwise the
 * refusal is counted and logged and MOSQ_ERR_AUTH returned. */
int auth_outcome(struct policyd_plugin *plugin, const char *client_id, const struct policy_auth_result *res);

/* Gives an allowed client policyd's identity (res->username) as username
 * (counted) and caches the scopes sent with it; by_password: it was verified
 * by a password, not a certificate. */
struct mosquitto;
int auth_set_identity(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id,
		const struct policy_auth_result *res, bool by_password);


void auth_log_stats(const struct policyd_plugin *plugin);

#endif
