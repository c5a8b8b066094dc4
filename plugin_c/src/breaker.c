#include "breaker.h"

void breaker_init(struct breaker *b, unsigned threshold, int64_t cooldown_ms)
{
	b->state = BREAKER_CLOSED;
	b->threshold = threshold > 0 ? threshold : 1;
	b->cooldown_ms = cooldown_ms;
	b->misses = 0;
	b->open_until_ms = 0;
	b->opens = 0;
}


bool breaker_allows(struct breaker *b, int64_t now_ms)
{
	if(b->state != BREAKER_OPEN){
		return true;
	}
	if(now_ms < b->open_until_ms){
		return false;
	}
	b->state = BREAKER_HALF_OPEN;
	return true;
}


bool breaker_record(struct breaker *b, bool deadline_missed, int64_t now_ms)
{
	if(!deadline_missed){
		/* Any other outcome returned promptly: nothing to protect against. */
		b->misses = 0;
		b->state = BREAKER_CLOSED;
		return false;
	}
	b->misses++;
	if(b->state == BREAKER_HALF_OPEN || b->misses >= b->threshold){
		b->state = BREAKER_OPEN;
		b->open_until_ms = now_ms + b->cooldown_ms;
		b->opens++;
		return true;
	}
	return false;
}


const char *breaker_state_name(enum breaker_state state)
{
	switch(state){
		case BREAKER_CLOSED: return "closed";
		case BREAKER_OPEN: return "open";
		case BREAKER_HALF_OPEN: return "half-open";
	}
	return "unknown";
}
