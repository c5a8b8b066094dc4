/*
 * The shim's counters: one log line every auth_opt_policyd_stats_interval_s
 * (and at shutdown; in identity mode followed by the CONNECT counters), and the same figures sent to the daemon as ShimStats so
 * that its metrics include them. Main thread only; sending never waits.
 */
#ifndef POLICYD_STATS_H
#define POLICYD_STATS_H

#include <stddef.h>
#include <stdint.h>

struct policyd_plugin;
struct policy_shim_stats;

/* Round trips of the checks asked on the broker's thread (cache misses): what
 * a miss costs the broker, whatever the daemon's own figures say. Counts per
 * bucket; the bounds (µs) are stats.c's and travel with every report. */
#define ROUND_TRIP_BOUNDS 23
struct round_trips {
	uint64_t counts[ROUND_TRIP_BOUNDS + 1];  /* the last: longer than every bound */
	uint64_t sum_us;
};

void stats_round_trip(struct round_trips *rt, int64_t us);

/* Called from the broker's MOSQ_EVT_TICK: logs and reports when due. */
void stats_on_tick(struct policyd_plugin *plugin, int64_t now_ms);

void stats_log(const struct policyd_plugin *plugin);

void stats_fill(const struct policyd_plugin *plugin, struct policy_shim_stats *out);

#endif
