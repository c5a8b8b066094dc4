/*
 * Circuit breaker for a hung daemon. A daemon that is down fails calls at
 * once (the channel is in TRANSIENT_FAILURE), but one that is hung (stopped,
 * deadlocked, swapping) makes every uncached check wait a whole deadline on
 * the broker's only thread. After `threshold` consecutive deadline misses
 * the breaker opens: checks do not call the daemon for `cooldown_ms`; then
 * one check is let through as a probe (half-open): an answer closes the
 * breaker, another deadline miss opens it again.
 *
 * Main thread only; no locking.
 */
#ifndef POLICYD_BREAKER_H
#define POLICYD_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

enum breaker_state {
	BREAKER_CLOSED,
	BREAKER_OPEN,
	BREAKER_HALF_OPEN,
};

struct breaker {
	enum breaker_state state;
	unsigned threshold;
	int64_t cooldown_ms;
	unsigned misses;        /* consecutive deadline misses */
	int64_t open_until_ms;
	uint64_t opens;         /* times it opened (counter) */
};

void breaker_init(struct breaker *b, unsigned threshold, int64_t cooldown_ms);

/* May this check call the daemon? Moves OPEN to HALF_OPEN once the
 * cool-down is over (that call is the probe). */
bool breaker_allows(struct breaker *b, int64_t now_ms);

/* Outcome of a call that was made. Returns true when this opened the breaker. */
bool breaker_record(struct breaker *b, bool deadline_missed, int64_t now_ms);

const char *breaker_state_name(enum breaker_state state);

#endif
