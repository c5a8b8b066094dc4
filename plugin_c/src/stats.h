/*
 * The shim's counters: one log line every auth_opt_policyd_stats_interval_s
 * (and at shutdown; in identity mode followed by the CONNECT counters), and the same figures sent to the daemon as ShimStats so
 * that its metrics include them. Main thread only; sending never waits.
 */
#ifndef POLICYD_STATS_H
#define POLICYD_STATS_H

#include <stdint.h>

struct policyd_plugin;
struct policy_shim_stats;

/* Called from the broker's MOSQ_EVT_TICK: logs and reports when due. */
void stats_on_tick(struct policyd_plugin *plugin, int64_t now_ms);

void stats_log(const struct policyd_plugin *plugin);

void stats_fill(const struct policyd_plugin *plugin, struct policy_shim_stats *out);

#endif
