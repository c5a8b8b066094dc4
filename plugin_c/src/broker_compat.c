/*
 * Differences between Mosquitto 2.0 and 2.1 that the plugin bridges (see
 * broker_compat.h). Symbols are resolved from the broker's global scope:
 * the plugin is dlopen()ed by the broker executable, which exports its
 * plugin API with -rdynamic.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdio.h>
#include <time.h>

#include <mosquitto.h>

#include "broker_compat.h"

typedef int (*plugin_set_info_fn)(mosquitto_plugin_id_t *, const char *, const char *);

static plugin_set_info_fn set_info_fn;
static broker_complete_basic_auth_fn complete_basic_auth_fn;
typedef struct mosquitto *(*client_by_id_fn)(const char *);
static client_by_id_fn client_by_id;

/* MOSQ_EVT_TICK's data as 2.1 lays it out. The slot 2.0's header calls
 * next_ns is 2.1's next_ms: the delay the broker waits before this plugin's
 * next tick. 2.0 never reads it back. */
struct tick_event_v21 {
	void *future;
	long now_ns;
	long next_ms;
	time_t now_s;
	time_t next_s;
	void *future2[4];
};

#if LIBMOSQUITTO_MAJOR == 2 && LIBMOSQUITTO_MINOR == 0
_Static_assert(offsetof(struct tick_event_v21, next_ms) == offsetof(struct mosquitto_evt_tick, next_ns),
		"2.1's next_ms must sit where 2.0's header puts next_ns");
#else
_Static_assert(offsetof(struct tick_event_v21, next_ms) == offsetof(struct mosquitto_evt_tick, next_ms),
		"the tick event's layout is 2.1's");
#endif
_Static_assert(sizeof(struct tick_event_v21) == sizeof(struct mosquitto_evt_tick),
		"the tick event has one size in 2.0 and 2.1");


void broker_compat_init(void)
{
	/* dlsym returns void *; POSIX guarantees it converts to a function pointer. */
	*(void **)&set_info_fn = dlsym(RTLD_DEFAULT, "mosquitto_plugin_set_info");
	*(void **)&complete_basic_auth_fn = dlsym(RTLD_DEFAULT, "mosquitto_complete_basic_auth");
	*(void **)&client_by_id = dlsym(RTLD_DEFAULT, "mosquitto_client");
}


const char *broker_rc_text(int rc)
{
	static __thread char unknown[32];

	switch(rc){
		case MOSQ_ERR_SUCCESS: return "success";
		case MOSQ_ERR_NOMEM: return "out of memory";
		case MOSQ_ERR_INVAL: return "invalid arguments";
		case MOSQ_ERR_NOT_FOUND: return "not found";
		case MOSQ_ERR_NOT_SUPPORTED: return "not supported by this broker";
		case MOSQ_ERR_ALREADY_EXISTS: return "already registered";
		case MOSQ_ERR_PLUGIN_DEFER: return "deferred";
		case MOSQ_ERR_AUTH: return "authentication refused";
		case MOSQ_ERR_ACL_DENIED: return "access denied";
		case MOSQ_ERR_UNKNOWN: return "unknown error";
		default:
			snprintf(unknown, sizeof(unknown), "broker error %d", rc);
			return unknown;
	}
}


bool broker_set_plugin_info(mosquitto_plugin_id_t *identifier, const char *name, const char *version)
{
	if(set_info_fn == NULL){
		return false;
	}
	return set_info_fn(identifier, name, version) == MOSQ_ERR_SUCCESS;
}


/* mosquitto_plugin_set_info came with 2.1's tick scheduling. */
bool broker_schedules_ticks(void)
{
	return set_info_fn != NULL;
}


void broker_request_tick(void *tick_event_data, long ms)
{
	struct tick_event_v21 *tick = tick_event_data;

	if(tick != NULL && ms > 0 && (tick->next_ms == 0 || ms < tick->next_ms)){
		tick->next_ms = ms;
	}
}


broker_complete_basic_auth_fn broker_complete_basic_auth(void)
{
	return complete_basic_auth_fn;
}


enum broker_registered broker_client_registered(const struct mosquitto *client)
{
	const char *id;

	if(client_by_id == NULL){
		return BROKER_REGISTERED_UNKNOWN;
	}
	id = mosquitto_client_id(client);
	return id != NULL && client_by_id(id) == client ? BROKER_REGISTERED_YES : BROKER_REGISTERED_NO;
}
