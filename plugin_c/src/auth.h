/*
 * Identity mode (auth_opt_policyd_identity cert): at CONNECT the client's
 * certificate goes to policyd's Authenticate; its answer decides whether the
 * client may connect and which identity it gets as username. docs/identity.md.
 */
#ifndef POLICYD_AUTH_H
#define POLICYD_AUTH_H

#include <stdint.h>

#include "logging.h"
#include "policy_client.h"

struct policyd_plugin;

struct policyd_auth {
	uint64_t allowed;                     /* CONNECTs accepted, username set */
	uint64_t denied;                      /* refused by policyd (RESULT_DENY) */
	uint64_t rejected;                    /* refused locally: no certificate, set_username failed */
	uint64_t errors[POLICY_ERR__COUNT];   /* refused: no usable answer, by kind */
	struct log_limiter denied_log;
	struct log_limiter rejected_log;
	struct log_limiter error_log;
};

void auth_init(struct policyd_auth *auth);

/* MOSQ_EVT_BASIC_AUTH callback; userdata is the struct policyd_plugin.
 * MOSQ_ERR_SUCCESS only when policyd allowed and the username was set;
 * MOSQ_ERR_AUTH (CONNACK "not authorized") in every other case. */
int auth_basic_callback(int event, void *event_data, void *userdata);

void auth_log_stats(const struct policyd_plugin *plugin);

#endif
