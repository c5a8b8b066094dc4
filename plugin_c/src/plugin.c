/*
 * mosquitto_policyd: Mosquitto v5 plugin that asks policyd, over gRPC,
 * for every ACL decision and denies whenever it gets no clear "allow".
 *
 *   plugin /usr/lib/mosquitto_policyd.so
 *   plugin_opt_policyd_address unix:/run/policyd/policyd.sock
 *   plugin_opt_policyd_timeout_ms 100
 *
 * One build loads into Mosquitto 2.0 and 2.1 (broker_compat.h).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "acl.h"
#include "auth.h"
#include "broker_compat.h"
#include "config.h"
#include "conn.h"
#include "logging.h"
#include "plugin_state.h"
#include "policy_client.h"
#include "stats.h"
#include "watch.h"

/* What 2.1 reports for this plugin (mosquitto_plugin_set_info). */
#define PLUGIN_NAME "mosquitto_policyd"
#ifndef PLUGIN_VERSION
#define PLUGIN_VERSION "unknown"
#endif

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


/* How often the tick runs on 2.1 when nothing else wakes the broker: the
 * latency of kicks and Watch events on an idle broker. 2.0 ticks about
 * every 100 ms by itself. */
#define PLUGIN_TICK_INTERVAL_MS 50
/* ... and when 2.1 skips a requested tick, how late it may be before the
 * main thread is woken (tick_wake.h). */
#define PLUGIN_TICK_OVERDUE_MS 75
/* ... and while CONNECTs wait for policyd (2.1, identity mode), how soon
 * their answers are handed to the broker. */
#define PLUGIN_TICK_CONNECT_MS 5
/* 2.0 runs the tick on every pass of its loop, one pass per packet when
 * busy: sweeps and stats run at most this often, kicks on every pass. */
#define PLUGIN_TICK_HOUSEKEEPING_MS 10

/* MOSQ_EVT_TICK (main thread). Anything else that must run periodically
 * belongs in here too, one call each. */
static int plugin_on_tick(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;

	(void)event;
	if(plugin != NULL){
		int64_t now = monotonic_ms();

		tick_wake_ticked(plugin->tick_wake, now);
		if(plugin->auth_delayed != NULL){
			auth_delayed_on_tick(plugin);
		}
		watch_on_tick(plugin->watch, plugin->conns, now);
		if(now >= plugin->housekeeping_due_ms){
			plugin->housekeeping_due_ms = now + PLUGIN_TICK_HOUSEKEEPING_MS;
			conn_sweep(plugin->conns, now);
			stats_on_tick(plugin, now);
			acl_on_tick(plugin, now);
		}
		if(plugin->auth_delayed != NULL && auth_delayed_waiting(plugin->auth_delayed)){
			broker_request_tick(event_data, PLUGIN_TICK_CONNECT_MS);
		}
	}
	broker_request_tick(event_data, PLUGIN_TICK_INTERVAL_MS);
	return MOSQ_ERR_SUCCESS;
}


/* The broker's main thread: every callback of ours runs there, and nothing of
 * ours is safe anywhere else. Mosquitto 2.1's HTTP API asks BASIC_AUTH and
 * ACL_CHECK from libmicrohttpd's own thread, with a stand-in client (id
 * "http-api", the URL path as topic); such checks are refused without touching
 * the plugin's state (docs/versions.md). */
static pthread_t plugin_main_thread;
static atomic_ulong plugin_foreign_refused;

static int plugin_refuse_foreign(int event)
{
	unsigned long n = atomic_fetch_add(&plugin_foreign_refused, 1) + 1;

	/* No shared limiter off the main thread: log the 1st, 2nd, 4th, 8th... */
	if((n & (n - 1)) == 0){
		plog(MOSQ_LOG_WARNING, "%s asked from outside the broker's main thread (Mosquitto's HTTP API?): "
				"refused (%lu so far)", event == MOSQ_EVT_BASIC_AUTH ? "authentication" : "access check", n);
	}
	return event == MOSQ_EVT_BASIC_AUTH ? MOSQ_ERR_AUTH : MOSQ_ERR_ACL_DENIED;
}


static int plugin_on_acl_check(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	const struct mosquitto_evt_acl_check *ed = event_data;

	if(!pthread_equal(pthread_self(), plugin_main_thread)){
		return plugin_refuse_foreign(event);
	}
	/* CONNECTs are completed later only on 2.1 in identity mode. */
	if(plugin != NULL && plugin->auth_delayed != NULL && ed != NULL){
		auth_delayed_claim(plugin, ed->client);
	}
	return acl_check_callback(event, event_data, userdata);
}


/* 2.1, identity mode: the end of a delayed CONNECT's completion. */
static int plugin_on_connect(int event, void *event_data, void *userdata)
{
	struct policyd_plugin *plugin = userdata;
	const struct broker_evt_connect *ed = event_data;

	(void)event;
	if(plugin != NULL && ed != NULL){
		auth_delayed_claim(plugin, ed->client);
	}
	return MOSQ_ERR_SUCCESS;
}


static int plugin_on_basic_auth(int event, void *event_data, void *userdata)
{
	if(!pthread_equal(pthread_self(), plugin_main_thread)){
		return plugin_refuse_foreign(event);
	}
	return auth_basic_callback(event, event_data, userdata);
}


struct plugin_callback {
	int event;
	MOSQ_FUNC_generic_callback callback;
	const char *what;
	bool optional;  /* a broker that does not know the event still runs the plugin */
};

/* Every callback in every mode: BASIC_AUTH too, since a username a client
 * merely claims (any listener without use_identity_as_username) must be
 * verified before the rules treat it as that identity (auth.c). */
static const struct plugin_callback plugin_callbacks[] = {
	{MOSQ_EVT_ACL_CHECK, plugin_on_acl_check, "ACL check", false},
	{MOSQ_EVT_DISCONNECT, acl_disconnect_callback, "disconnect", false},
	/* 2.1 reports a client that leaves a persistent session here instead of DISCONNECT. */
	{BROKER_EVT_CLIENT_OFFLINE, acl_disconnect_callback, "client offline", true},
	{MOSQ_EVT_TICK, plugin_on_tick, "tick", false},
	{MOSQ_EVT_BASIC_AUTH, plugin_on_basic_auth, "CONNECT", false},
	{BROKER_EVT_CONNECT, plugin_on_connect, "CONNECT accepted (delayed identity)", false},
};

#define PLUGIN_CALLBACK_COUNT (sizeof(plugin_callbacks) / sizeof(plugin_callbacks[0]))
_Static_assert(PLUGIN_CALLBACK_COUNT <= 32, "callbacks_registered has one bit per row");


/* CONNECT accepted: only when CONNECTs are answered later (2.1, identity mode). */
static bool plugin_wants(const struct policyd_plugin *plugin, const struct plugin_callback *cb)
{
	return cb->event != BROKER_EVT_CONNECT || plugin->auth_delayed != NULL;
}


static void plugin_unregister(struct policyd_plugin *plugin)
{
	size_t i;
	int rc;

	for(i = 0; i < PLUGIN_CALLBACK_COUNT; i++){
		if(!(plugin->callbacks_registered & (UINT32_C(1) << i))){
			continue;
		}
		rc = mosquitto_callback_unregister(plugin->identifier, plugin_callbacks[i].event,
				plugin_callbacks[i].callback, NULL);
		if(rc != MOSQ_ERR_SUCCESS){
			plog(MOSQ_LOG_WARNING, "cannot unregister the %s callback: %s",
					plugin_callbacks[i].what, broker_rc_text(rc));
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
	auth_delayed_destroy(plugin->auth_delayed);
	plugin->auth_delayed = NULL;
	watch_destroy(plugin->watch); /* joins its thread: nothing of ours runs after cleanup */
	plugin->watch = NULL;
	tick_wake_stop(plugin->tick_wake); /* after the Watch thread, which may wake the broker */
	plugin->tick_wake = NULL;
	policy_client_destroy(plugin->client);
	cache_destroy(plugin->cache);
	plugin->cache = NULL;
	plugin->client = NULL;
	conn_table_destroy(plugin->conns);
	plugin->conns = NULL;
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
		.keepalive_ms = plugin->config.keepalive_s * 1000,
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
	if(acl_cache_start(plugin) != MOSQ_ERR_SUCCESS){
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
		.keepalive_ms = plugin->config.keepalive_s * 1000,
		/* 2.1 runs the tick only when due: waking it earlier gains nothing. */
		.wake = broker_schedules_ticks() ? NULL : plugin->tick_wake,
	};
	const char *errmsg = "unknown error";

	plugin->watch = watch_create(&opts, &errmsg);
	if(plugin->watch == NULL){
		plog(MOSQ_LOG_ERR, "cannot start the Watch stream: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}


/* Identity mode on a broker with delayed basic auth (2.1): CONNECTs never wait on the main thread. */
static int plugin_start_auth_delayed(struct policyd_plugin *plugin)
{
	struct policy_client_options opts = {
		.target = plugin->config.address,
		.timeout_ms = plugin->config.timeout_ms,
		.tls = &plugin->tls,
	};
	const char *errmsg = "unknown error";

	if(plugin->config.identity != IDENTITY_CERT || broker_complete_basic_auth() == NULL){
		return MOSQ_ERR_SUCCESS;
	}
	plugin->auth_delayed = auth_delayed_create(&opts, &errmsg);
	if(plugin->auth_delayed == NULL){
		plog(MOSQ_LOG_ERR, "cannot start answering CONNECTs off the main thread: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}


static int plugin_start_tick_wake(struct policyd_plugin *plugin)
{
	const char *errmsg = "unknown error";

	/* 2.0 ticks on every pass of its loop: only woken for Watch events. */
	plugin->tick_wake = tick_wake_start(broker_schedules_ticks() ? PLUGIN_TICK_OVERDUE_MS : 0, &errmsg);
	if(plugin->tick_wake == NULL){
		plog(MOSQ_LOG_ERR, "cannot keep the broker's tick going: %s", errmsg);
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_SUCCESS;
}


static int plugin_register(struct policyd_plugin *plugin)
{
	const struct plugin_callback *cb;
	size_t i;
	int rc;

	for(i = 0; i < PLUGIN_CALLBACK_COUNT; i++){
		cb = &plugin_callbacks[i];
		if(!plugin_wants(plugin, cb)){
			continue;
		}
		rc = mosquitto_callback_register(plugin->identifier, cb->event, cb->callback, NULL, plugin);
		if(rc == MOSQ_ERR_NOT_SUPPORTED && cb->optional){
			plog(MOSQ_LOG_DEBUG, "this broker has no %s event", cb->what);
			continue;
		}
		if(rc != MOSQ_ERR_SUCCESS){
			plog(MOSQ_LOG_ERR, "cannot register the %s callback: %s", cb->what, broker_rc_text(rc));
			return rc;
		}
		plugin->callbacks_registered |= UINT32_C(1) << i;
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
	plugin_main_thread = pthread_self(); /* the broker loads plugins on its main thread */
	broker_compat_init();
	broker_set_plugin_info(identifier, PLUGIN_NAME, PLUGIN_VERSION);
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
		rc = plugin_start_tick_wake(plugin);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_start_watch(plugin);
	}
	if(rc == MOSQ_ERR_SUCCESS){
		rc = plugin_start_auth_delayed(plugin);
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
				"(needs require_certificate true, use_identity_as_username false), %s",
				plugin->auth_delayed != NULL ? "answered off the broker's main thread (delayed basic auth)"
				: "answered on the broker's main thread");
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
	if(plugin->tick_wake != NULL){
		plog(MOSQ_LOG_INFO, "the broker was woken %" PRIu64 " times (%s)", tick_wake_count(plugin->tick_wake),
				broker_schedules_ticks() ? "an overdue tick" : "kicks from the Watch stream");
	}
	plugin_free(plugin);
	return MOSQ_ERR_SUCCESS;
}
