/*
 * libFuzzer target: topic_filter_matches() over arbitrary filter/topic bytes
 * (first byte = split point). Checks properties a correct matcher must have
 * on plain ASCII topic names: a topic matches itself, `#` matches it unless
 * it starts with `$`, and a topic with a wildcard or NUL never matches.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "topic_match.h"

static int is_plain_topic(const char *s, size_t n)
{
	size_t i;

	if(n == 0){
		return 0;  /* not a topic name (MQTT 5 §4.7.3) */
	}
	for(i = 0; i < n; i++){
		unsigned char c = (unsigned char)s[i];
		if(c == '\0' || c == '+' || c == '#' || c >= 0x80){
			return 0;
		}
	}
	return 1;
}

static int has_wildcard_or_nul(const char *s, size_t n)
{
	return memchr(s, '+', n) || memchr(s, '#', n) || memchr(s, '\0', n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *filter, *topic;
	size_t split, filter_len, topic_len;
	bool m;

	if(size == 0){
		return 0;
	}
	split = data[0] % size;
	filter = (const char *)data + 1;
	filter_len = split > 0 ? split - 1 : 0;
	topic = (const char *)data + 1 + filter_len;
	topic_len = size - 1 - filter_len;

	m = topic_filter_matches(filter, filter_len, topic, topic_len);
	if(m && has_wildcard_or_nul(topic, topic_len)){
		abort();
	}
	if(is_plain_topic(topic, topic_len)){
		if(!topic_filter_matches(topic, topic_len, topic, topic_len)){
			abort();
		}
		if(topic_filter_matches("#", 1, topic, topic_len) != (topic[0] != '$')){
			abort();
		}
	}
	return 0;
}
