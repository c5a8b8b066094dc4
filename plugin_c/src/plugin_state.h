/*
 * The plugin's one state struct. Allocated in mosquitto_plugin_init(),
 * handed to the broker as userdata, freed in mosquitto_plugin_cleanup().
 * Only touched from the broker's main thread.
 */
#ifndef POLICYD_PLUGIN_STATE_H
#define POLICYD_PLUGIN_STATE_H

#include <stdbool.h>
#include <stdint.h>

#include <mosquitto_broker.h>

#include "auth.h"
#include "auth_delayed.h"
#include "breaker.h"
#include "cache.h"
#include "config.h"
#include "conn.h"
#include "link_tls.h"
#include "tick_wake.h"
#include "logging.h"
#include "policy_client.h"
#include "stats.h"
#include "watch.h"

struct policyd_counters {
	uint64_t checks;                      /* ACL events seen */
	uint64_t allowed;                     /* RESULT_ALLOW */
	uint64_t denied;                      /* RESULT_DENY */
	uint64_t rejected;                    /* denied locally: no client id/topic, unknown access */
	uint64_t errors[POLICY_ERR__COUNT];   /* denied: no usable answer, by kind */
	uint64_t cache_hits;                  /* answered from the decision cache */
	uint64_t cache_misses;                /* cache consulted, daemon asked (or breaker open) */
	uint64_t stale_served;                /* on_error stale: expired cached answer served */
	uint64_t breaker_rejected;            /* not asked: breaker open */
	uint64_t tick_missing_episodes;       /* times TICK was found missing while checks ran */
};

struct policyd_limiters {
	struct log_limiter errors[POLICY_ERR__COUNT];
	struct log_limiter denied;
	struct log_limiter rejected;
	struct log_limiter recovered;
	struct log_limiter stale;
	struct log_limiter breaker;
};

struct policyd_plugin {
	mosquitto_plugin_id_t *identifier;
	struct policyd_config config;
	struct policy_client *client;
	uint32_t callbacks_registered;        /* bit i: row i of plugin.c's callback table */
	uint64_t failing_streak;              /* consecutive checks without an answer */
	/* Newest policy generation known to the shim. Written by whichever thread
	 * learns it (a CheckAcl answer on the main thread, the Watch stream on its
	 * own thread); cached decisions of an older generation are not served. */
	_Atomic uint64_t generation;
	struct policyd_watch *watch;          /* Policy.Watch thread; kicks on TICK */
	struct conn_table *conns;             /* connections seen: verification, certificate facts */
	struct tick_wake *tick_wake;          /* 2.1: wakes the main loop when a tick is overdue */
	struct policyd_counters counters;
	struct policyd_limiters limiters;
	/* Decision cache, breaker and stats timing: main thread only. */
	struct cache *cache;
	uint64_t cache_generation;            /* generation the cache was last flushed to */
	int64_t sweep_resume_ms;              /* no new sweep pass before this (acl.c) */
	struct breaker breaker;
	int64_t stats_next_ms;                /* next periodic stats line/report */
	struct round_trips round_trips;       /* CheckAcl calls on the broker's thread */
	int64_t housekeeping_due_ms;          /* next sweeps and stats at TICK (plugin.c) */
	/* TICK watchdog (acl.c): Mosquitto 2.0 with per_listener_settings true
	 * sends no MOSQ_EVT_TICK, and kicks, Watch events and stats stop. */
	int64_t tick_due_by_ms;               /* a TICK is missing after this; 0: no check or TICK yet */
	bool tick_missing;                    /* no TICK for TICK_EXPECTED_WITHIN_MS while checks run */
	struct log_limiter tick_log;
	struct policyd_auth auth;             /* identity mode: CONNECT counters, log limiters */
	struct auth_delayed *auth_delayed;    /* identity mode on 2.1: CONNECTs answered off the main thread */
	struct link_tls tls;                  /* mutual TLS to policyd, if configured */
};

#endif
