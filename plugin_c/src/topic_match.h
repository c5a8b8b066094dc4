/*
 * MQTT topic filter matching (MQTT 5 §4.7) on length-delimited bytes, for
 * the decision cache's scoped entries. Pure functions, no allocation.
 */
#ifndef POLICYD_TOPIC_MATCH_H
#define POLICYD_TOPIC_MATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Does `filter` match the topic name `topic`? `+` matches one whole level,
 * a final `#` matches the parent level and everything below it, and a
 * wildcard in the first level never matches a topic starting with `$`.
 * A topic that is not a valid topic name (containing `+`, `#` or NUL, or
 * not well-formed UTF-8) never matches: the daemon decides those itself. */
bool topic_filter_matches(const char *filter, size_t filter_len, const char *topic, size_t topic_len);

/* A filter classified once, so that matching it many times (a cached scope)
 * needs no splitting into levels. topic_shape_matches(topic_filter_shape(f),
 * f, ...) answers exactly as topic_filter_matches(f, ...). */
enum topic_shape {
	TOPIC_SHAPE_OTHER,     /* anything else: matched level by level */
	TOPIC_SHAPE_NAME,      /* no wildcard, a valid topic name: only itself */
	TOPIC_SHAPE_ALL,       /* "#" */
	TOPIC_SHAPE_SUBTREE,   /* "P/#" with P free of wildcards, valid */
};

uint8_t topic_filter_shape(const char *filter, size_t filter_len);
bool topic_shape_matches(uint8_t shape, const char *filter, size_t filter_len,
		const char *topic, size_t topic_len);

#endif
