/*
 * mosquitto_policyd: Mosquitto v5 plugin that asks policyd, over gRPC,
 * for every ACL decision and denies whenever it gets no clear "allow".
 *
 *   auth_plugin /usr/lib/mosquitto_policyd.so
 *   auth_opt_policyd_address unix:/run/policyd/policyd.sock
 *   auth_opt_policyd_timeout_ms 100
 */
#include <inttypes.h>
#include <stdlib.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "config.h"
#include "logging.h"
#include "plugin_state.h"
#include "policy_client.h"

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


static void plugin_log_counters(const struct policyd_plugin *plugin)
{
	const struct policyd_counters *c = &plugin->counters;

	plog(MOSQ_LOG_INFO, "checks=%" PRIu64 " allowed=%" PRIu64 " denied=%" PRIu64
			" rejected=%" PRIu64 " errors: unavailable=%" PRIu64 " deadline=%" PRIu64
			" status=%" PRIu64 " protocol=%" PRIu64 " internal=%" PRIu64,
			c->checks, c->allowed, c->denied, c->rejected,
			c->errors[POLICY_ERR_UNAVAILABLE], c->errors[POLICY_ERR_DEADLINE],
			c->errors[POLICY_ERR_STATUS], c->errors[POLICY_ERR_PROTOCOL],
			c->errors[POLICY_ERR_INTERNAL]);
}


static void plugin_free(struct policyd_plugin *plugin)
{
	int rc;

	if(plugin == NULL){
		return;
	}
	if(plugin->acl_registered){
		rc = mosquitto_callback_unregister(plugin->identifier, MOSQ_EVT_ACL_CHECK,
				acl_check_callback, NULL);
		if(rc != MOSQ_ERR_SUCCESS){
			plog(MOSQ_LOG_WARNING, "cannot unregister the ACL check callback: %s",
					mosquitto_strerror(rc));
		}
		plugin->acl_registered = false;
	}
	policy_client_destroy(plugin->client);
	plugin->client = NULL;
	config_free(&plugin->config);
	free(plugin);
}


static int plugin_start_client(struct policyd_plugin *plugin)
{
	struct policy_client_options opts = {
		.target = plugin->config.address,
		.timeout_ms = plugin->config.timeout_ms,
	};
	const char *errmsg = "unknown error";

	plugin->client = policy_client_create(&opts, &errmsg);
	if(plugin->client == NULL){
		plog(MOSQ_LOG_ERR, "cannot create the gRPC client: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}


static int plugin_register(struct policyd_plugin *plugin)
{
	int rc;

	rc = mosquitto_callback_register(plugin->identifier, MOSQ_EVT_ACL_CHECK,
			acl_check_callback, NULL, plugin);
	if(rc != MOSQ_ERR_SUCCESS){
		plog(MOSQ_LOG_ERR, "cannot register the ACL check callback: %s", mosquitto_strerror(rc));
		return rc;
	}
	plugin->acl_registered = true;
	return MOSQ_ERR_SUCCESS;
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

	rc = config_parse(&plugin->config, options, option_count);
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_start_client(plugin);
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
	plog(MOSQ_LOG_INFO, "ACL checks go to %s (timeout %d ms); anything but an allow is a deny",
			plugin->config.address, plugin->config.timeout_ms);
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
	plugin_log_counters(plugin);
	plugin_free(plugin);
	return MOSQ_ERR_SUCCESS;
}
