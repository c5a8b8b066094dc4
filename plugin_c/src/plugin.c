/*
 * mosquitto_policyd: Mosquitto v5 plugin that asks policyd, over gRPC,
 * for every ACL decision and denies whenever it gets no clear "allow".
 *
 *   auth_plugin /usr/lib/mosquitto_policyd.so
 *   auth_opt_policyd_address unix:/run/policyd/policyd.sock
 *   auth_opt_policyd_timeout_ms 100
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "auth.h"
#include "config.h"
#include "conn.h"
#include "logging.h"
#include "plugin_state.h"
#include "policy_client.h"
#include "stats.h"
#include "watch.h"

/* Built with -fvisibility=hidden; only these are exported. */
#define POLICYD_EXPORT __attribute__((visibility("default")))

POLICYD_EXPORT int mosquitto_plugin_version(int supported_version_count, const int *supported_versions);
POLICYD_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count);
POLICYD_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count);


int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	if(supported_versions == NULL){
		return -1;
	}
	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == MOSQ_PLUGIN_VERSION){
			return MOSQ_PLUGIN_VERSION;
		}
	}
	return -1;
}


/* MOSQ_EVT_TICK (main thread, every pass of the broker's loop). Anything
 * else that must run periodically belongs in here too, one call each. */
static int plugin_on_tick(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;

	(void)event;
	(void)event_data;
	if(plugin != NULL){
		watch_on_tick(plugin->watch, plugin->conns);
		conn_sweep(plugin->conns, monotonic_ms());
		stats_on_tick(plugin, monotonic_ms());
	}
	return MOSQ_ERR_SUCCESS;
}


struct plugin_callback {
	int event;
	MOSQ_FUNC_generic_callback callback;
	const char *what;
};

/* Every callback in every mode: BASIC_AUTH too, since a username a client
 * merely claims (any listener without use_identity_as_username) must be
 * verified before the rules treat it as that identity (auth.c). */
static const struct plugin_callback plugin_callbacks[] = {
	{MOSQ_EVT_ACL_CHECK, acl_check_callback, "ACL check"},
	{MOSQ_EVT_DISCONNECT, acl_disconnect_callback, "disconnect"},
	{MOSQ_EVT_TICK, plugin_on_tick, "tick"},
	{MOSQ_EVT_BASIC_AUTH, auth_basic_callback, "CONNECT"},
};

#define PLUGIN_CALLBACK_COUNT (sizeof(plugin_callbacks) / sizeof(plugin_callbacks[0]))


static void plugin_unregister(struct policyd_plugin *plugin)
{
	size_t i;
	int rc;

	for(i = 0; i < PLUGIN_CALLBACK_COUNT && i < plugin->callbacks_registered; i++){
		rc = mosquitto_callback_unregister(plugin->identifier, plugin_callbacks[i].event,
				plugin_callbacks[i].callback, NULL);
		if(rc != MOSQ_ERR_SUCCESS){
			plog(MOSQ_LOG_WARNING, "cannot unregister the %s callback: %s",
					plugin_callbacks[i].what, mosquitto_strerror(rc));
		}
	}
	plugin->callbacks_registered = 0;
}


static void plugin_free(struct policyd_plugin *plugin)
{
	if(plugin == NULL){
		return;
	}
	plugin_unregister(plugin);
	watch_destroy(plugin->watch); /* joins its thread: nothing of ours runs after cleanup */
	plugin->watch = NULL;
	policy_client_destroy(plugin->client);
	cache_destroy(plugin->cache);
	plugin->cache = NULL;
	conn_table_destroy(plugin->conns);
	plugin->conns = NULL;
	plugin->client = NULL;
	config_free(&plugin->config);
	link_tls_free(&plugin->tls);
	free(plugin);
}


static int plugin_start_client(struct policyd_plugin *plugin)
{
	struct policy_client_options opts = {
		.target = plugin->config.address,
		.timeout_ms = plugin->config.timeout_ms,
		.tls = &plugin->tls,
	};
	const char *errmsg = "unknown error";
	const char *path = NULL;

	errmsg = link_tls_load(&plugin->tls, plugin->config.tls_ca, plugin->config.tls_cert,
			plugin->config.tls_key, &path);
	if(errmsg != NULL){
		plog(MOSQ_LOG_ERR, "mutual TLS to policyd: %s%s%s", path ? path : "", path ? ": " : "", errmsg);
		return MOSQ_ERR_INVAL;
	}
	plugin->client = policy_client_create(&opts, &errmsg);
	if(plugin->client == NULL){
		plog(MOSQ_LOG_ERR, "cannot create the gRPC client: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	plugin->conns = conn_table_create();
	if(plugin->conns == NULL){
		plog(MOSQ_LOG_ERR, "out of memory for the connection table");
		return MOSQ_ERR_NOMEM;
	}
	plugin->cache = cache_create((size_t)plugin->config.cache_size);
	if(plugin->cache == NULL){
		plog(MOSQ_LOG_ERR, "out of memory for a decision cache of %d entries", plugin->config.cache_size);
		return MOSQ_ERR_NOMEM;
	}
	breaker_init(&plugin->breaker, (unsigned)plugin->config.breaker_threshold,
			plugin->config.breaker_cooldown_ms);
	return MOSQ_ERR_SUCCESS;
}


/* The Policy.Watch thread: generations without waiting for cache expiry, and kicks. */
static int plugin_start_watch(struct policyd_plugin *plugin)
{
	struct watch_options opts = {
		.target = plugin->config.address,
		.broker_id = plugin->config.broker_id,
		.generation = &plugin->generation,
		.tls = &plugin->tls,
	};
	const char *errmsg = "unknown error";

	plugin->watch = watch_create(&opts, &errmsg);
	if(plugin->watch == NULL){
		plog(MOSQ_LOG_ERR, "cannot start the Watch stream: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}


static int plugin_register(struct policyd_plugin *plugin)
{
	const struct plugin_callback *cb;
	int rc;

	while(plugin->callbacks_registered < PLUGIN_CALLBACK_COUNT){
		cb = &plugin_callbacks[plugin->callbacks_registered];
		rc = mosquitto_callback_register(plugin->identifier, cb->event, cb->callback, NULL, plugin);
		if(rc != MOSQ_ERR_SUCCESS){
			plog(MOSQ_LOG_ERR, "cannot register the %s callback: %s", cb->what, mosquitto_strerror(rc));
			return rc;
		}
		plugin->callbacks_registered++;
	}
	return MOSQ_ERR_SUCCESS;
}


/* ShimStats name this broker by host name unless configured. */
static int plugin_default_broker_id(struct policyd_config *cfg)
{
	char host[256];

	if(cfg->broker_id != NULL){
		return MOSQ_ERR_SUCCESS;
	}
	if(gethostname(host, sizeof(host)) != 0){
		snprintf(host, sizeof(host), "mosquitto");
	}
	host[sizeof(host) - 1] = '\0';
	cfg->broker_id = strdup(host);
	return cfg->broker_id ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOMEM;
}


int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	struct policyd_plugin *plugin;
	int rc;

	if(identifier == NULL || userdata == NULL){
		return MOSQ_ERR_INVAL;
	}
	*userdata = NULL;

	plugin = calloc(1, sizeof(*plugin));
	if(plugin == NULL){
		plog(MOSQ_LOG_ERR, "out of memory");
		return MOSQ_ERR_NOMEM;
	}
	plugin->identifier = identifier;
	acl_limiters_init(plugin);
	auth_init(&plugin->auth);

	rc = config_parse(&plugin->config, options, option_count);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_default_broker_id(&plugin->config);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_start_client(plugin);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_start_watch(plugin);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_register(plugin);
	}
	if(rc != MOSQ_ERR_SUCCESS){
		plog(MOSQ_LOG_ERR, "initialisation failed");
		plugin_free(plugin);
		return rc;
	}

	*userdata = plugin;
	if(plugin->config.identity == IDENTITY_CERT){
		plog(MOSQ_LOG_INFO, "identity mode: CONNECT decided by policyd from the client certificate "
				"(needs require_certificate true, use_identity_as_username false)");
	}
	plog(MOSQ_LOG_INFO, "ACL checks go to %s (timeout %d ms, cache %d entries up to %d s, "
			"on_error %s, breaker after %d deadline misses for %d ms)",
			plugin->config.address, plugin->config.timeout_ms, plugin->config.cache_size,
			plugin->config.cache_ttl_s, plugin->config.on_error == ON_ERROR_STALE ? "stale" : "deny",
			plugin->config.breaker_threshold, plugin->config.breaker_cooldown_ms);
	return MOSQ_ERR_SUCCESS;
}


int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	struct policyd_plugin *plugin = userdata;

	(void)options;
	(void)option_count;

	if(plugin == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	stats_log(plugin);
	if(plugin->config.identity == IDENTITY_CERT){
		auth_log_stats(plugin);
	}
	plugin_free(plugin);
	return MOSQ_ERR_SUCCESS;
}
