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


static bool is_plain_name(const char *topic, size_t len)
{
	return memchr(topic, '+', len) == NULL && memchr(topic, '#', len) == NULL
			&& memchr(topic, '\0', len) == NULL && is_utf8((const unsigned char *)topic, len);
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
