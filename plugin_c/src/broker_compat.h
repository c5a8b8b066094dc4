/*
 * What differs between the brokers the plugin runs in: Debian's Mosquitto
 * 2.0 and Mosquitto 2.1. The plugin is built against 2.0's headers and links
 * only functions both brokers export; 2.1-only functions are looked up at run
 * time, so one build loads into either broker.
 */
#ifndef POLICYD_BROKER_COMPAT_H
#define POLICYD_BROKER_COMPAT_H

#include <stdbool.h>

#include <mosquitto_broker.h>

/* 2.1's event for a client going offline while its session persists (it
 * then sends no MOSQ_EVT_DISCONNECT); 2.0 refuses it with MOSQ_ERR_NOT_SUPPORTED.
 * Its data has the layout of struct mosquitto_evt_disconnect. */
#define BROKER_EVT_CLIENT_OFFLINE 28

/* 2.1's MOSQ_EVT_CONNECT (a client's CONNECT accepted) and its data; 2.0 has neither. */
#define BROKER_EVT_CONNECT 11
struct broker_evt_connect {
	void *future;
	struct mosquitto *client;
	void *future2[4];
};

/* 2.1's return code for "answer later" from BASIC_AUTH (mosquitto_complete_basic_auth). */
#ifndef MOSQ_ERR_AUTH_DELAYED
#define MOSQ_ERR_AUTH_DELAYED (-5)
#endif

/* Looks up the 2.1-only functions in the running broker; call once, before the rest. */
void broker_compat_init(void);

/* A broker return code as text. 2.1 keeps mosquitto_strerror() in a library
 * its broker does not export, so the plugin names the codes it meets itself. */
const char *broker_rc_text(int rc);

/* Names the plugin to the broker (2.1's mosquitto_plugin_set_info); false on 2.0. */
bool broker_set_plugin_info(mosquitto_plugin_id_t *identifier, const char *name, const char *version);

/* True on a broker that sleeps until a plugin asks for its next tick (2.1). */
bool broker_schedules_ticks(void);

/* Asks the broker to run this plugin's TICK again within `ms` milliseconds.
 * 2.1 sleeps until a plugin asks; 2.0 ticks by itself and ignores the request. */
void broker_request_tick(void *tick_event_data, long ms);

/* 2.1's mosquitto_complete_basic_auth(), or NULL on a broker without delayed basic auth. */
typedef void (*broker_complete_basic_auth_fn)(const char *client_id, int result);
broker_complete_basic_auth_fn broker_complete_basic_auth(void);

/* Is this client the session the broker holds under its client id? A client
 * is registered only once its CONNECT is accepted, so BASIC_AUTH for a
 * registered client is a re-authentication (a broker SIGHUP, of a connected
 * client or of an offline session), never a CONNECT. 2.1 answers it (its
 * mosquitto_client()); 2.0 cannot: BROKER_REGISTERED_UNKNOWN. */
enum broker_registered { BROKER_REGISTERED_NO, BROKER_REGISTERED_YES, BROKER_REGISTERED_UNKNOWN };
enum broker_registered broker_client_registered(const struct mosquitto *client);

#endif
