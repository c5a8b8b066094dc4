#include <inttypes.h>
#include <string.h>

#include <mosquitto.h>

#include "auth.h"
#include "auth_delayed.h"
#include "plugin_state.h"
#include "stats.h"

/* Fine around the targets (p50 200 µs, p99 1 ms), coarse beyond. */
static const uint32_t round_trip_bounds_us[ROUND_TRIP_BOUNDS] = {
	25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400, 500, 600, 800,
	1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000, 100000,
};


void stats_round_trip(struct round_trips *rt, int64_t us)
{
	size_t i = 0;

	if(us < 0){
		us = 0;
	}
	while(i < ROUND_TRIP_BOUNDS && (uint64_t)us > round_trip_bounds_us[i]){
		i++;
	}
	rt->counts[i]++;
	rt->sum_us += (uint64_t)us;
}


static uint64_t errors_total(const struct policyd_counters *c)
{
	uint64_t sum = 0;
	int i;

	for(i = 0; i < POLICY_ERR__COUNT; i++){
		sum += c->errors[i];
	}
	return sum;
}


void stats_fill(const struct policyd_plugin *plugin, struct policy_shim_stats *out)
{
	const struct policyd_counters *c = &plugin->counters;

	memset(out, 0, sizeof(*out));
	out->broker_id = plugin->config.broker_id;
	out->checks = c->checks;
	out->allowed = c->allowed;
	out->denied = c->denied;
	out->errors = errors_total(c) + c->rejected + c->breaker_rejected;
	out->cache_hits = c->cache_hits;
	out->cache_misses = c->cache_misses;
	out->cache_entries = cache_entries(plugin->cache);
	out->cache_bytes = cache_bytes(plugin->cache);
	out->stale_served = c->stale_served;
	out->breaker_opens = plugin->breaker.opens;
	out->breaker_open = plugin->breaker.state != BREAKER_CLOSED;
	out->tick_missing = plugin->tick_missing;
	out->round_trip_bounds_us = round_trip_bounds_us;
	out->round_trip_counts = plugin->round_trips.counts;
	out->n_round_trip_bounds = ROUND_TRIP_BOUNDS;
	out->round_trip_sum_us = plugin->round_trips.sum_us;
}


void stats_log(const struct policyd_plugin *plugin)
{
	const struct policyd_counters *c = &plugin->counters;

	plog(MOSQ_LOG_INFO, "checks=%" PRIu64 " allowed=%" PRIu64 " denied=%" PRIu64
			" rejected=%" PRIu64 " cache: hits=%" PRIu64 " misses=%" PRIu64 " entries=%zu/%zu"
			" bytes=%zu/%zu evictions=%" PRIu64 " not_stored=%" PRIu64 " stale=%" PRIu64 " breaker: %s opens=%" PRIu64
			" skipped=%" PRIu64 " tick_missing=%d errors: unavailable=%" PRIu64 " deadline=%" PRIu64
			" status=%" PRIu64 " protocol=%" PRIu64 " internal=%" PRIu64,
			c->checks, c->allowed, c->denied, c->rejected,
			c->cache_hits, c->cache_misses, cache_entries(plugin->cache),
			cache_capacity(plugin->cache), cache_bytes(plugin->cache), cache_bytes_limit(plugin->cache),
			cache_evictions(plugin->cache), cache_not_stored(plugin->cache), c->stale_served,
			breaker_state_name(plugin->breaker.state), plugin->breaker.opens,
			c->breaker_rejected, plugin->tick_missing ? 1 : 0,
			c->errors[POLICY_ERR_UNAVAILABLE], c->errors[POLICY_ERR_DEADLINE],
			c->errors[POLICY_ERR_STATUS], c->errors[POLICY_ERR_PROTOCOL],
			c->errors[POLICY_ERR_INTERNAL]);
	/* CONNECTs refused, waiting or given up on: seen while the broker runs,
	 * not only when it stops (a flood of waiting CONNECTs, an outage). */
	if(plugin->config.identity == IDENTITY_CERT){
		auth_log_stats(plugin);
	}
	if(plugin->auth_delayed != NULL){
		struct auth_delayed_stats ds;

		auth_delayed_get_stats(plugin->auth_delayed, &ds);
		plog(MOSQ_LOG_INFO, "delayed CONNECTs: queued=%" PRIu64 " completed=%" PRIu64 " superseded=%" PRIu64
				" overflow=%" PRIu64 " retried=%" PRIu64 " unanswered=%" PRIu64, ds.queued, ds.completed,
				ds.superseded, ds.overflow, ds.retried, ds.unanswered);
	}
}


void stats_on_tick(struct policyd_plugin *plugin, int64_t now_ms)
{
	struct policy_shim_stats st;
	int64_t interval_ms = (int64_t)plugin->config.stats_interval_s * 1000;

	if(interval_ms <= 0){
		return;
	}
	if(plugin->stats_next_ms == 0){
		plugin->stats_next_ms = now_ms + interval_ms;
		return;
	}
	if(now_ms < plugin->stats_next_ms){
		return;
	}
	plugin->stats_next_ms = now_ms + interval_ms;
	stats_log(plugin);
	stats_fill(plugin, &st);
	/* Skipped (not queued) while the previous report is still in flight. */
	(void)policy_client_report_stats(plugin->client, &st);
}
