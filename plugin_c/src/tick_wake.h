/*
 * Keeps MOSQ_EVT_TICK coming on Mosquitto 2.1 when the broker is idle.
 *
 * 2.1 sleeps until the earliest event it knows of, and a plugin's requested
 * tick (next_ms) is only re-armed when that tick runs: if a client packet
 * wakes the loop before the tick is due, the tick is skipped and nothing
 * re-arms it, so the broker may sleep for seconds (until a keepalive or
 * $SYS deadline) with kicks and Watch events waiting. This thread notices an
 * overdue tick and interrupts the main thread's epoll_wait() with a signal
 * whose handler does nothing; the loop then runs the tick.
 *
 * On 2.0, which runs the tick on every pass of its loop and waits at most
 * 100 ms between passes, there is no watchdog: tick_wake_now() interrupts
 * the wait when the Watch stream brings kicks, so they run at once instead
 * of at the next pass (0-100 ms later).
 */
#ifndef POLICYD_TICK_WAKE_H
#define POLICYD_TICK_WAKE_H

#include <stdint.h>

struct tick_wake;

/* Call on the broker's main thread (the one to wake). A tick is overdue
 * `overdue_ms` after the last one; 0: no watchdog, tick_wake_now() only.
 * NULL with *errmsg set on failure. */
struct tick_wake *tick_wake_start(int64_t overdue_ms, const char **errmsg);

/* Any thread: interrupt the main thread's wait now. NULL is fine. */
void tick_wake_now(struct tick_wake *wake);

/* From the tick callback (main thread): the tick ran now. */
void tick_wake_ticked(struct tick_wake *wake, int64_t now_ms);

/* How often the main thread was woken (for the stats line). */
uint64_t tick_wake_count(const struct tick_wake *wake);

/* Stops and joins the thread; NULL is fine. */
void tick_wake_stop(struct tick_wake *wake);

#endif
