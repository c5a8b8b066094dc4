/*
 * Logging helpers: every line goes through mosquitto_log_printf() with a
 * "policyd: " prefix. Only call these from the broker's main thread.
 */
#ifndef POLICYD_LOGGING_H
#define POLICYD_LOGGING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* A limiter lets `burst` lines through per LOG_LIMIT_WINDOW_MS; the lines
 * it holds back are counted and reported on the next line it lets through. */
#define LOG_LIMIT_WINDOW_MS 10000

struct log_limiter {
	int64_t window_start_ms;
	unsigned burst;
	unsigned used;
	unsigned long suppressed;
};

/* Caps for untrusted strings (usernames, client ids, topics, daemon text)
 * after escaping; buffers passed to log_sanitize() use these sizes. */
#define LOG_IDENT_MAX 96
#define LOG_TOPIC_MAX 160

void log_limiter_init(struct log_limiter *limiter, unsigned burst);

void plog(int level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Takes a slot for one line and returns true, or counts the line as
 * suppressed and returns false. Callers format (and escape) only after a
 * true answer, so suppressed lines cost next to nothing. */
bool log_limiter_admit(struct log_limiter *limiter);

/* Logs a line admitted by log_limiter_admit(), followed by
 * "(N more suppressed)" when lines were held back before it. */
void plog_admitted(struct log_limiter *limiter, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Copies src (srclen bytes, need not be NUL terminated; NULL allowed) into
 * dst as printable ASCII: bytes outside 0x20..0x7e, '\\' and '\'' become
 * \xNN escapes. Output that does not fit ends in "...". Returns dst. */
const char *log_sanitize(char *dst, size_t dstlen, const char *src, size_t srclen);

/* Same for a NUL-terminated string (NULL allowed, rendered as "(null)"). */
const char *log_sanitize_str(char *dst, size_t dstlen, const char *src);

/* The monotonic clock, inline: every cache hit reads it (an expiry check). */
static inline struct timespec monotonic_now(void)
{
	struct timespec ts;

	if(clock_gettime(CLOCK_MONOTONIC, &ts) != 0){
		ts.tv_sec = 0;
		ts.tv_nsec = 0;
	}
	return ts;
}

static inline int64_t monotonic_ms(void)
{
	struct timespec ts = monotonic_now();

	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t monotonic_us(void)
{
	struct timespec ts = monotonic_now();

	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

#endif
