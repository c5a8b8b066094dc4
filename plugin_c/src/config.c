#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "config.h"
#include "link_target.h"
#include "logging.h"

#define CONFIG_STRING_MAX 4096

/*
 * Options are described by a table; adding one means adding a field to
 * struct policyd_config, a row below and, for a new kind of value, a case
 * in option_set().
 */
enum option_kind {
	OPT_STRING,
	OPT_INT,
	OPT_CHOICE,         /* one of `choices`; stored as its index (an int) */
};

struct option_spec {
	const char *key;
	enum option_kind kind;
	size_t offset;
	bool required;
	bool secret;        /* never echo the value in a log line */
	long min, max;      /* OPT_INT only */
	const char *const *choices;  /* OPT_CHOICE only, NULL-terminated */
};

static const char *const on_error_choices[] = {"deny", "stale", NULL};
static const char *const identity_choices[] = {"off", "cert", NULL};
static const char *const bool_choices[] = {"false", "true", NULL};

static const struct option_spec option_specs[] = {
	{
		.key = "policyd_address", .kind = OPT_STRING,
		.offset = offsetof(struct policyd_config, address),
		.required = true,
	},
	{
		.key = "policyd_timeout_ms", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, timeout_ms),
		.min = CONFIG_TIMEOUT_MS_MIN, .max = CONFIG_TIMEOUT_MS_MAX,
	},
	{
		.key = "policyd_cache_size", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, cache_size),
		.min = 0, .max = 10000000,
	},
	{
		.key = "policyd_cache_ttl_s", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, cache_ttl_s),
		.min = 0, .max = 86400,
	},
	{
		.key = "policyd_cache_bytes", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, cache_bytes),
		.min = CONFIG_CACHE_BYTES_MIN, .max = INT_MAX,
	},
	{
		.key = "policyd_cache_client_entries", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, cache_client_entries),
		.min = 1, .max = 10000000,
	},
	{
		.key = "policyd_stale_max_age_s", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, stale_max_age_s),
		.min = 1, .max = 86400,
	},
	{
		.key = "policyd_on_error", .kind = OPT_CHOICE,
		.offset = offsetof(struct policyd_config, on_error),
		.choices = on_error_choices,
	},
	{
		.key = "policyd_stats_interval_s", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, stats_interval_s),
		.min = 0, .max = 86400,
	},
	{
		.key = "policyd_breaker_threshold", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, breaker_threshold),
		.min = 1, .max = 1000,
	},
	{
		.key = "policyd_breaker_cooldown_ms", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, breaker_cooldown_ms),
		.min = 1, .max = 600000,
	},
	{
		.key = "policyd_broker_id", .kind = OPT_STRING,
		.offset = offsetof(struct policyd_config, broker_id),
	},
	{.key = "policyd_tls_ca", .kind = OPT_STRING, .offset = offsetof(struct policyd_config, tls_ca)},
	{.key = "policyd_tls_cert", .kind = OPT_STRING, .offset = offsetof(struct policyd_config, tls_cert)},
	{.key = "policyd_tls_key", .kind = OPT_STRING, .offset = offsetof(struct policyd_config, tls_key)},
	{
		.key = "policyd_insecure_plaintext", .kind = OPT_CHOICE,
		.offset = offsetof(struct policyd_config, insecure_plaintext),
		.choices = bool_choices,
	},
	{
		.key = "policyd_keepalive_s", .kind = OPT_INT,
		.offset = offsetof(struct policyd_config, keepalive_s),
		.min = CONFIG_KEEPALIVE_S_MIN, .max = 3600,
	},
	{
		.key = "policyd_identity", .kind = OPT_CHOICE,
		.offset = offsetof(struct policyd_config, identity),
		.choices = identity_choices,
	},
};

#define OPTION_COUNT (sizeof(option_specs) / sizeof(option_specs[0]))


static void config_defaults(struct policyd_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->timeout_ms = CONFIG_TIMEOUT_MS_DEFAULT;
	cfg->cache_size = CONFIG_CACHE_SIZE_DEFAULT;
	cfg->cache_ttl_s = CONFIG_CACHE_TTL_S_DEFAULT;
	cfg->cache_bytes = CONFIG_CACHE_BYTES_DEFAULT;
	cfg->cache_client_entries = CONFIG_CACHE_CLIENT_ENTRIES_DEFAULT;
	cfg->stale_max_age_s = CONFIG_STALE_MAX_AGE_S_DEFAULT;
	cfg->on_error = ON_ERROR_DENY;
	cfg->stats_interval_s = CONFIG_STATS_INTERVAL_S_DEFAULT;
	cfg->breaker_threshold = CONFIG_BREAKER_THRESHOLD_DEFAULT;
	cfg->breaker_cooldown_ms = CONFIG_BREAKER_COOLDOWN_MS_DEFAULT;
	cfg->keepalive_s = CONFIG_KEEPALIVE_S_DEFAULT;
}


static const struct option_spec *option_find(const char *key)
{
	size_t i;

	for(i = 0; i < OPTION_COUNT; i++){
		if(strcmp(option_specs[i].key, key) == 0){
			return &option_specs[i];
		}
	}
	return NULL;
}


static void log_bad_value(const struct option_spec *spec, const char *value, const char *why)
{
	char shown[LOG_TOPIC_MAX];

	if(spec->secret){
		plog(MOSQ_LOG_ERR, "invalid auth_opt_%s (value not shown): %s", spec->key, why);
	}else{
		plog(MOSQ_LOG_ERR, "invalid auth_opt_%s '%s': %s", spec->key,
				log_sanitize_str(shown, sizeof(shown), value), why);
	}
}


static int parse_int(const struct option_spec *spec, const char *value, int *out)
{
	char *end = NULL;
	long v;

	if(value[0] < '0' || value[0] > '9'){
		log_bad_value(spec, value, "expected a decimal integer");
		return MOSQ_ERR_INVAL;
	}
	errno = 0;
	v = strtol(value, &end, 10);
	if(end == value || *end != '\0' || (errno != 0 && errno != ERANGE)){
		log_bad_value(spec, value, "expected a decimal integer");
		return MOSQ_ERR_INVAL;
	}
	if(errno == ERANGE || v < spec->min || v > spec->max || v > INT_MAX){
		char why[64];

		snprintf(why, sizeof(why), "must be between %ld and %ld", spec->min, spec->max);
		log_bad_value(spec, value, why);
		return MOSQ_ERR_INVAL;
	}
	*out = (int)v;
	return MOSQ_ERR_SUCCESS;
}


static int parse_string(const struct option_spec *spec, const char *value, char **out)
{
	size_t len = strlen(value);
	size_t i;

	if(len == 0){
		log_bad_value(spec, value, "must not be empty");
		return MOSQ_ERR_INVAL;
	}
	if(len > CONFIG_STRING_MAX){
		log_bad_value(spec, value, "too long");
		return MOSQ_ERR_INVAL;
	}
	for(i = 0; i < len; i++){
		if((unsigned char)value[i] < 0x20 || value[i] == 0x7f){
			log_bad_value(spec, value, "contains control characters");
			return MOSQ_ERR_INVAL;
		}
	}
	*out = strdup(value);
	if(*out == NULL){
		plog(MOSQ_LOG_ERR, "out of memory while reading auth_opt_%s", spec->key);
		return MOSQ_ERR_NOMEM;
	}
	return MOSQ_ERR_SUCCESS;
}


static int parse_choice(const struct option_spec *spec, const char *value, int *out)
{
	int i;

	for(i = 0; spec->choices[i] != NULL; i++){
		if(strcmp(spec->choices[i], value) == 0){
			*out = i;
			return MOSQ_ERR_SUCCESS;
		}
	}
	log_bad_value(spec, value, "not one of the allowed values");
	return MOSQ_ERR_INVAL;
}


static int option_set(struct policyd_config *cfg, const struct option_spec *spec, const char *value)
{
	void *field = (char *)cfg + spec->offset;

	switch(spec->kind){
		case OPT_STRING:
			return parse_string(spec, value, (char **)field);
		case OPT_INT:
			return parse_int(spec, value, (int *)field);
		case OPT_CHOICE:
			return parse_choice(spec, value, (int *)field);
	}
	return MOSQ_ERR_INVAL;
}


static int config_apply(struct policyd_config *cfg, const struct mosquitto_opt *opt, bool *seen)
{
	const struct option_spec *spec;
	char shown[LOG_IDENT_MAX];
	size_t idx;

	if(opt->key == NULL || strncmp(opt->key, CONFIG_KEY_PREFIX, strlen(CONFIG_KEY_PREFIX)) != 0){
		return MOSQ_ERR_SUCCESS; /* belongs to someone else */
	}
	spec = option_find(opt->key);
	if(spec == NULL){
		plog(MOSQ_LOG_ERR, "unknown option auth_opt_%s",
				log_sanitize_str(shown, sizeof(shown), opt->key));
		return MOSQ_ERR_INVAL;
	}
	idx = (size_t)(spec - option_specs);
	if(seen[idx]){
		plog(MOSQ_LOG_ERR, "option auth_opt_%s given more than once", spec->key);
		return MOSQ_ERR_INVAL;
	}
	seen[idx] = true;
	if(opt->value == NULL){
		plog(MOSQ_LOG_ERR, "option auth_opt_%s has no value", spec->key);
		return MOSQ_ERR_INVAL;
	}
	return option_set(cfg, spec, opt->value);
}


static int config_check_required(const bool *seen)
{
	size_t i;
	int rc = MOSQ_ERR_SUCCESS;

	for(i = 0; i < OPTION_COUNT; i++){
		if(option_specs[i].required && !seen[i]){
			plog(MOSQ_LOG_ERR, "missing required option auth_opt_%s", option_specs[i].key);
			rc = MOSQ_ERR_INVAL;
		}
	}
	return rc;
}


/* Plaintext gRPC only to this host: on a network path anyone could read the
 * checks and answer "allow". */
static int config_check_link(const struct policyd_config *cfg)
{
	char shown[LOG_TOPIC_MAX];

	if(cfg->tls_ca != NULL || link_target_is_local(cfg->address)){
		return MOSQ_ERR_SUCCESS;
	}
	if(cfg->insecure_plaintext){
		plog(MOSQ_LOG_WARNING, "auth_opt_policyd_address '%s' is not on this host and the link is plaintext "
				"(auth_opt_policyd_insecure_plaintext true): anyone on the path can answer for policyd",
				log_sanitize_str(shown, sizeof(shown), cfg->address));
		return MOSQ_ERR_SUCCESS;
	}
	plog(MOSQ_LOG_ERR, "invalid auth_opt_policyd_address '%s': plaintext gRPC is only allowed to a unix: socket or "
			"a loopback address; use mutual TLS (auth_opt_policyd_tls_ca, _tls_cert, _tls_key), or accept the "
			"risk with auth_opt_policyd_insecure_plaintext true", log_sanitize_str(shown, sizeof(shown), cfg->address));
	return MOSQ_ERR_INVAL;
}


int config_parse(struct policyd_config *cfg, const struct mosquitto_opt *opts, int opt_count)
{
	bool seen[OPTION_COUNT] = {false};
	int i;
	int rc = MOSQ_ERR_SUCCESS;

	config_defaults(cfg);
	if(opt_count > 0 && opts == NULL){
		plog(MOSQ_LOG_ERR, "broker passed no option list");
		return MOSQ_ERR_INVAL;
	}
	for(i = 0; i < opt_count && rc == MOSQ_ERR_SUCCESS; i++){
		rc = config_apply(cfg, &opts[i], seen);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = config_check_required(seen);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = config_check_link(cfg);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		config_free(cfg);
	}
	return rc;
}


void config_free(struct policyd_config *cfg)
{
	if(cfg == NULL){
		return;
	}
	free(cfg->address);
	free(cfg->broker_id);
	free(cfg->tls_ca);
	free(cfg->tls_cert);
	free(cfg->tls_key);
	config_defaults(cfg);
}
