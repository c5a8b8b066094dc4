/*
 * MQTT topic filter matching (MQTT 5 §4.7) on length-delimited bytes, for
 * the decision cache's scoped entries. Pure functions, no allocation.
 */
#ifndef POLICYD_TOPIC_MATCH_H
#define POLICYD_TOPIC_MATCH_H

#include <stdbool.h>
#include <stddef.h>

/* Does `filter` match the topic name `topic`? `+` matches one whole level,
 * a final `#` matches the parent level and everything below it, and a
 * wildcard in the first level never matches a topic starting with `$`.
 * A topic that is not a valid topic name (containing `+`, `#` or NUL, or
 * not well-formed UTF-8) never matches: the daemon decides those itself. */
bool topic_filter_matches(const char *filter, size_t filter_len, const char *topic, size_t topic_len);

#endif
