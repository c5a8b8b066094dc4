/*
 * The Policy.Watch stream: how a broker learns of reloads without waiting
 * for cached answers to expire, and whom a reload disconnects.
 *
 * A background thread holds the stream open on its own gRPC channel
 * (reconnecting with backoff), raises the shared policy generation as events
 * arrive and queues the usernames to kick. It never calls a broker API and
 * never logs: watch_on_tick(), called from MOSQ_EVT_TICK on the broker's
 * main thread, disconnects the queued usernames and logs what happened.
 */
#ifndef POLICYD_WATCH_H
#define POLICYD_WATCH_H

#include <stdbool.h>
#include <stdint.h>

struct policyd_watch;

struct watch_options {
	const char *target;              /* gRPC target of policyd, as for checks */
	const char *broker_id;           /* sent in WatchRequest, for the daemon's logs */
	_Atomic uint64_t *generation;    /* raised (never lowered) as events arrive */
	const struct link_tls *tls;      /* NULL or not loaded: plaintext (link_tls.h) */
	int keepalive_ms;                /* HTTP/2 keepalive ping interval, > 0 */
	struct tick_wake *wake;          /* NULL, or woken when an event brings kicks (tick_wake.h) */
};

struct watch_stats {
	uint64_t events;                 /* PolicyEvents received */
	uint64_t streams;                /* streams opened (1 + reconnects) */
	uint64_t kicks_queued;
	uint64_t kicks_done;             /* mosquitto_kick_client_by_username() calls that succeeded */
	uint64_t kicks_failed;           /* ... that returned an error */
	uint64_t kicks_dropped;          /* queue full, or a name that cannot be a username */
	uint64_t bad_events;             /* messages that did not decode as a PolicyEvent */
	uint64_t replays_incomplete;     /* reopened streams whose missed kicks the daemon could not prove */
	bool connected;                  /* a stream is open and has sent its first event */
};

/* Starts the thread. NULL on failure, with *errmsg a static description. */
struct policyd_watch *watch_create(const struct watch_options *opts, const char **errmsg);

/* Cancels the stream, joins the thread, frees everything. NULL is allowed.
 * Main thread; call before the broker unloads the plugin. */
void watch_destroy(struct policyd_watch *watch);

struct conn_table;

/* Main thread (MOSQ_EVT_TICK): disconnects the connections the latest events
 * revoke or whose class they kick (conns: conn.h), kicks queued usernames,
 * logs stream changes. Nothing new since the last call costs no lock. */
void watch_on_tick(struct policyd_watch *watch, struct conn_table *conns, int64_t now_ms);

/* Any thread: a consistent copy of the counters. */
void watch_stats_get(struct policyd_watch *watch, struct watch_stats *out);

#endif
