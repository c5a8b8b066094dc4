#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mosquitto_broker.h>

#include "logging.h"

#define LOG_LINE_MAX 1024

void log_limiter_init(struct log_limiter *limiter, unsigned burst)
{
	memset(limiter, 0, sizeof(*limiter));
	limiter->burst = burst > 0 ? burst : 1;
	limiter->window_start_ms = INT64_MIN;
}


static void log_vline(int level, const char *fmt, va_list ap, unsigned long suppressed)
{
	char line[LOG_LINE_MAX];

	if(vsnprintf(line, sizeof(line), fmt, ap) < 0){
		return;
	}
	if(suppressed > 0){
		mosquitto_log_printf(level, "policyd: %s (%lu more suppressed)", line, suppressed);
	}else{
		mosquitto_log_printf(level, "policyd: %s", line);
	}
}


void plog(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vline(level, fmt, ap, 0);
	va_end(ap);
}


bool log_limiter_admit(struct log_limiter *limiter)
{
	int64_t now = monotonic_ms();

	if(limiter->window_start_ms == INT64_MIN
			|| now - limiter->window_start_ms >= LOG_LIMIT_WINDOW_MS){
		limiter->window_start_ms = now;
		limiter->used = 0;
	}
	if(limiter->used >= limiter->burst){
		limiter->suppressed++;
		return false;
	}
	limiter->used++;
	return true;
}


void plog_admitted(struct log_limiter *limiter, int level, const char *fmt, ...)
{
	va_list ap;
	unsigned long suppressed = limiter->suppressed;

	limiter->suppressed = 0;
	va_start(ap, fmt);
	log_vline(level, fmt, ap, suppressed);
	va_end(ap);
}


static int needs_escape(unsigned char c)
{
	return c < 0x20 || c > 0x7e || c == '\\' || c == '\'';
}


const char *log_sanitize(char *dst, size_t dstlen, const char *src, size_t srclen)
{
	static const char hex[] = "0123456789abcdef";
	static const char ellipsis[] = "...";
	size_t in, out = 0;
	size_t limit;

	if(dst == NULL || dstlen == 0){
		return "";
	}
	if(src == NULL){
		snprintf(dst, dstlen, "(null)");
		return dst;
	}
	if(dstlen < sizeof(ellipsis) + 4){
		dst[0] = '\0';
		return dst;
	}
	/* Room for the widest escape plus the ellipsis and the terminator. */
	limit = dstlen - sizeof(ellipsis) - 4;
	for(in = 0; in < srclen; in++){
		unsigned char c = (unsigned char)src[in];

		if(out > limit){
			memcpy(&dst[out], ellipsis, sizeof(ellipsis));
			return dst;
		}
		if(needs_escape(c)){
			dst[out++] = '\\';
			dst[out++] = 'x';
			dst[out++] = hex[c >> 4];
			dst[out++] = hex[c & 0x0f];
		}else{
			dst[out++] = (char)c;
		}
	}
	dst[out] = '\0';
	return dst;
}


const char *log_sanitize_str(char *dst, size_t dstlen, const char *src)
{
	return log_sanitize(dst, dstlen, src, src ? strlen(src) : 0);
}
