#include <stdint.h>
#include <string.h>

#include "topic_match.h"

/* Length of the level starting at s (up to the next '/' or the end). */
static size_t level_len(const char *s, size_t len)
{
	const char *slash = memchr(s, '/', len);

	return slash ? (size_t)(slash - s) : len;
}


/* Well-formed UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF), as the daemon requires of a topic before any rule applies. */
static bool is_utf8(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while(i < len){
		unsigned char c = s[i];
		size_t n;
		uint32_t cp, min;

		if(c < 0x80){ i++; continue; }
		if((c & 0xe0) == 0xc0){ n = 1; cp = c & 0x1f; min = 0x80; }
		else if((c & 0xf0) == 0xe0){ n = 2; cp = c & 0x0f; min = 0x800; }
		else if((c & 0xf8) == 0xf0){ n = 3; cp = c & 0x07; min = 0x10000; }
		else return false;
		if(len - i <= n){
			return false;
		}
		for(size_t k = 1; k <= n; k++){
			if((s[i + k] & 0xc0) != 0x80){
				return false;
			}
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if(cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)){
			return false;
		}
		i += n + 1;
	}
	return true;
}


#define BYTES_01 0x0101010101010101ULL
#define BYTES_80 0x8080808080808080ULL

/* Some byte of w is NUL, '+' or '#' ('#' | 0x08 == '+', and no other byte
 * but '+' itself becomes '+'), assuming no byte of w has its high bit set. */
static inline bool word_has_special(uint64_t w)
{
	uint64_t wild = (w | (BYTES_01 * 0x08)) ^ (BYTES_01 * '+');

	return (((w - BYTES_01) & ~w) | ((wild - BYTES_01) & ~wild)) & BYTES_80;
}


/* From the first byte that is not ASCII on (a UTF-8 sequence cannot start in
 * the ASCII before it): no '+', '#' or NUL, and well-formed UTF-8. */
static __attribute__((noinline)) bool is_plain_utf8_rest(const unsigned char *s, size_t len)
{
	return memchr(s, '+', len) == NULL && memchr(s, '#', len) == NULL
			&& memchr(s, '\0', len) == NULL && is_utf8(s, len);
}


/* Too short for a word, or not only ASCII: byte by byte. */
static inline bool is_plain_bytes(const unsigned char *s, size_t len)
{
	size_t i;

	for(i = 0; i < len && s[i] < 0x80; i++){
		if(s[i] == '+' || s[i] == '#' || s[i] == '\0'){
			return false;
		}
	}
	return i == len || is_plain_utf8_rest(s + i, len - i);
}


/* No '+', '#' or NUL, and well-formed UTF-8. ASCII, the common case, is
 * checked a word at a time (the last word may overlap the one before; 4 to 7
 * bytes are two overlapping halves; fewer, byte by byte): this runs on
 * every cache hit through a scope. */
static inline __attribute__((always_inline)) bool is_plain_name(const char *topic, size_t len)
{
	const unsigned char *s = (const unsigned char *)topic;
	size_t i;
	uint64_t w;
	uint32_t lo, hi;

	if(len < 4){
		return is_plain_bytes(s, len);
	}
	if(len < 8){
		memcpy(&lo, s, 4);
		memcpy(&hi, s + len - 4, 4);
		w = lo | (uint64_t)hi << 32;
		return (w & BYTES_80) ? is_plain_bytes(s, len) : !word_has_special(w);
	}
	for(i = 0; ; i += 8){
		if(i + 8 > len){
			i = len - 8;
		}
		memcpy(&w, s + i, 8);
		if(w & BYTES_80){
			return is_plain_bytes(s + i, len - i); /* all before i is plain ASCII */
		}
		if(word_has_special(w)){
			return false;
		}
		if(i + 8 == len){
			return true;
		}
	}
}


bool topic_filter_matches(const char *filter, size_t filter_len, const char *topic, size_t topic_len)
{
	size_t fi = 0, ti = 0;

	if(filter == NULL || topic == NULL || filter_len == 0 || topic_len == 0){
		return false;
	}
	if(!is_plain_name(topic, topic_len)){
		/* Only an identical filter (no wildcard) can claim such a topic;
		 * leave everything else to the daemon. */
		return false;
	}
	if(topic[0] == '$' && (filter[0] == '+' || filter[0] == '#')){
		return false;
	}
	for(;;){
		size_t fl = level_len(filter + fi, filter_len - fi);
		bool topic_done = ti > topic_len;

		if(fl == 1 && filter[fi] == '#' && fi + 1 == filter_len){
			return true; /* also matches the parent: a/# matches a */
		}
		if(topic_done){
			return false;
		}
		size_t tl = level_len(topic + ti, topic_len - ti);
		if(!(fl == 1 && filter[fi] == '+')){
			if(fl != tl || memcmp(filter + fi, topic + ti, fl) != 0){
				return false;
			}
		}
		fi += fl + 1;
		ti += tl + 1;
		if(fi > filter_len){
			return ti > topic_len;   /* both ended */
		}
		/* filter has more levels; topic may have ended (ti > topic_len) */
	}
}


/* Wildcard-free, NUL-free, well-formed: the literal part of a filter that
 * can be compared byte for byte. */
static bool is_literal(const char *s, size_t len)
{
	return len == 0 || is_plain_name(s, len);
}


uint8_t topic_filter_shape(const char *filter, size_t filter_len)
{
	if(filter == NULL || filter_len == 0){
		return TOPIC_SHAPE_OTHER;
	}
	if(filter_len == 1 && filter[0] == '#'){
		return TOPIC_SHAPE_ALL;
	}
	if(is_literal(filter, filter_len)){
		return TOPIC_SHAPE_NAME;
	}
	if(filter_len >= 2 && filter[filter_len - 1] == '#' && filter[filter_len - 2] == '/'
			&& is_literal(filter, filter_len - 2)){
		return TOPIC_SHAPE_SUBTREE;
	}
	return TOPIC_SHAPE_OTHER;
}


bool topic_shape_matches(uint8_t shape, const char *filter, size_t filter_len,
		const char *topic, size_t topic_len)
{
	size_t prefix_len;

	if(topic == NULL || topic_len == 0){
		return false;
	}
	switch(shape){
		case TOPIC_SHAPE_NAME:
			/* the filter is a valid name: equal bytes make an equally valid topic */
			return topic_len == filter_len && memcmp(topic, filter, topic_len) == 0;
		case TOPIC_SHAPE_ALL:
			return topic[0] != '$' && is_plain_name(topic, topic_len);
		case TOPIC_SHAPE_SUBTREE:
			/* "P/#": P itself, or P followed by '/' and anything; P is valid and
			 * ends before a '/', so only the rest of the topic needs checking */
			prefix_len = filter_len - 2;
			if(topic_len < prefix_len || memcmp(topic, filter, prefix_len) != 0){
				return false;
			}
			if(topic_len == prefix_len){
				return prefix_len > 0;
			}
			return topic[prefix_len] == '/'
					&& is_plain_name(topic + prefix_len, topic_len - prefix_len);
	}
	return topic_filter_matches(filter, filter_len, topic, topic_len);
}
