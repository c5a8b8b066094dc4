#ifndef POLICYD_ACL_H
#define POLICYD_ACL_H

#include <stdbool.h>
#include <stdint.h>

struct mosquitto;
struct policyd_plugin;
struct policy_auth_result;

void acl_limiters_init(struct policyd_plugin *plugin);

/* MOSQ_EVT_ACL_CHECK callback; userdata is the struct policyd_plugin.
 * Returns MOSQ_ERR_SUCCESS only for an allow (from policyd, the cache, or
 * with on_error stale an expired cached allow) and MOSQ_ERR_ACL_DENIED in
 * every other case. */
int acl_check_callback(int event, void *event_data, void *userdata);

/* MOSQ_EVT_DISCONNECT callback: forgets the client's cached decisions. */
int acl_disconnect_callback(int event, void *event_data, void *userdata);

/* Creates plugin->cache from the configuration (logs why on failure). */
int acl_cache_start(struct policyd_plugin *plugin);
/* Whether answers are cached at all (a TTL and a capacity). */
bool acl_caching(const struct policyd_plugin *plugin);

/* Identity mode, a CONNECT accepted: caches the scopes Authenticate sent
 * with it (main thread), so the client's first checks need no call. */
void acl_remember_connect_scopes(struct policyd_plugin *plugin, struct mosquitto *client, const char *client_id,
		const struct policy_auth_result *res);

/* MOSQ_EVT_TICK: expired cache entries, a bounded slice per call. */
void acl_on_tick(struct policyd_plugin *plugin, int64_t now_ms);

#endif
