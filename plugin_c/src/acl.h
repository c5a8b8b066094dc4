#ifndef POLICYD_ACL_H
#define POLICYD_ACL_H

#include <stdint.h>

struct policyd_plugin;

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
/* MOSQ_EVT_TICK: expired cache entries, a bounded slice per call. */
void acl_on_tick(struct policyd_plugin *plugin, int64_t now_ms);

#endif
