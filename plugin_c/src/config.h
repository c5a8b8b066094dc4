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

struct policyd_config {
	char *address;      /* policyd_address: gRPC target, required */
	int timeout_ms;     /* policyd_timeout_ms: per-check deadline */
};

/* Fills cfg (defaults, then options). Logs one line per problem and returns
 * MOSQ_ERR_SUCCESS, MOSQ_ERR_INVAL or MOSQ_ERR_NOMEM. On failure cfg holds
 * nothing that needs freeing. */
int config_parse(struct policyd_config *cfg, const struct mosquitto_opt *opts, int opt_count);

void config_free(struct policyd_config *cfg);

#endif
